"""VAN inference on CPU: the fused eval path (BatchNorm pre-norms folded into proj_1 / fc1, GELU as oneDNN
post-ops, layer scale and shortcuts summed in the GEMMs) against the same model with the fast paths off.

    .venv/bin/python benchmarks/bench_van.py [--name van_b1] [--batch 8] [--size 224] [--rounds 8]
    .venv/bin/python benchmarks/bench_van.py --litv2 [--rounds 5]

``--litv2`` times, instead, (1) ``litv2_small`` forward (eval, inference mode, batch 8) against timm's
``swin_tiny_patch4_window7_224`` at 224 and against the same Swin built with ``img_size=448`` at 448
(targets: >= 1.2x and >= 1.5x Swin's img/s; random weights, only the speed is compared), and (2) one
training step (forward, backward, SGD with momentum; batch 8, 224) of ``van_b1`` and ``litv2_small`` with
the fast paths as shipped (automatic op backends) against the plain path (every op on its ``reference``
backend, the fused eval path off; target: no slower). Each table's variants and the GEMM yardstick are
timed round-robin in the same rounds; results go to ``benchmarks/results/van_litv2.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import machine_info, markdown_table, model_call, time_variants, write_json  # noqa: E402

import visionzoo  # noqa: E402
from visionzoo.blocks import fused_eval  # noqa: E402


def _plain(call):
    def run():
        fused_eval._AVAILABLE = False
        try:
            return call()
        finally:
            fused_eval._AVAILABLE = True
    return run


def _reference_backends(call):
    """``call`` with every op on its reference backend and the fused eval path off: the plain path."""
    def run():
        with visionzoo.ops._backend.use_backend("reference"):
            return _plain(call)()
    return run


def _litv2(rounds: int, batch: int, train_batch: int, warmup: int) -> int:
    import timm

    torch.manual_seed(0)
    litv2 = visionzoo.create_model("litv2_small").eval()
    fwd_rows = []
    for size, target in ((224, 1.2), (448, 1.5)):
        swin = timm.create_model("swin_tiny_patch4_window7_224", **({} if size == 224 else dict(img_size=size)))
        calls = {"litv2_small": model_call(lambda: litv2, batch, size),
                 "swin_tiny": model_call(lambda m=swin: m, batch, size)}
        t = time_variants(calls, rounds=rounds, warmup=warmup)
        ips = {k: batch / v.median_ms * 1e3 for k, v in t.items() if k != "gemm"}
        speedup = ips["litv2_small"] / ips["swin_tiny"]
        fwd_rows.append(dict(img=size, B=batch, litv2_img_s=ips["litv2_small"], swin_img_s=ips["swin_tiny"],
                             speedup=speedup, target=target, met="yes" if speedup >= target else "NO",
                             gemm_gflops=harness.gemm_gflops(t),
                             quiet=min(f"{v.quiet_rounds}/{v.rounds}" for v in t.values())))
        print(markdown_table(fwd_rows[-1:], list(fwd_rows[-1])).splitlines()[-1], file=sys.stderr)
    train_rows = []
    for name in ("van_b1", "litv2_small"):
        torch.manual_seed(0)
        fast = model_call(lambda n=name: visionzoo.create_model(n), train_batch, 224, train=True)
        torch.manual_seed(0)
        plain = _reference_backends(model_call(lambda n=name: visionzoo.create_model(n), train_batch, 224, train=True))
        t = time_variants({"fast": fast, "plain": plain}, rounds=rounds, warmup=warmup)
        speedup = t["plain"].median_ms / t["fast"].median_ms
        train_rows.append(dict(model=name, img=224, B=train_batch, fast_ms=t["fast"].median_ms,
                               plain_ms=t["plain"].median_ms, fast_img_s=train_batch / t["fast"].median_ms * 1e3,
                               speedup=speedup, met="yes" if speedup >= 1.0 else "NO",
                               gemm_gflops=harness.gemm_gflops(t),
                               quiet=min(f"{v.quiet_rounds}/{v.rounds}" for v in t.values())))
        print(markdown_table(train_rows[-1:], list(train_rows[-1])).splitlines()[-1], file=sys.stderr)
    print("litv2_small forward vs timm Swin-T (eval, inference mode)\n")
    print(markdown_table(fwd_rows, list(fwd_rows[0])))
    print("\ntraining step (fwd + bwd + SGD): fast paths as shipped vs plain (reference backends)\n")
    print(markdown_table(train_rows, list(train_rows[0])))
    write_json("van_litv2", dict(machine=machine_info(), rounds=rounds, warmup=warmup, batch=batch,
                                 train_batch=train_batch, forward=fwd_rows,
                                 train=train_rows))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default="van_b1")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--litv2", action="store_true", help="LITv2-S vs Swin-T forward and the training-step rows")
    p.add_argument("--train-batch", type=int, default=8, help="--litv2: batch of the training-step rows")
    p.add_argument("--warmup", type=int, default=2, help="--litv2: untimed calls per variant")
    args = p.parse_args(argv)
    if args.litv2:
        return _litv2(args.rounds, args.batch, args.train_batch, args.warmup)
    torch.manual_seed(0)
    model = visionzoo.create_model(args.name).eval()
    call = model_call(lambda: model, batch=args.batch, img_size=args.size)
    t = time_variants({"fused": call, "plain": _plain(call)}, rounds=args.rounds)
    rows = [dict(variant=k, median_ms=v.median_ms, min_ms=v.min_ms, quiet_rounds=f"{v.quiet_rounds}/{v.rounds}",
                 img_s=args.batch / v.median_ms * 1e3) for k, v in t.items()]
    ratio = t["plain"].median_ms / t["fused"].median_ms
    print(markdown_table(rows, ["variant", "median_ms", "min_ms", "quiet_rounds", "img_s"]))
    print(f"\n{args.name} {args.size}px batch {args.batch}: fused / plain speed-up {ratio:.2f}x")
    write_json(f"van_fused_{args.name}", dict(machine=machine_info(), args=vars(args), rows=rows, speedup=ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
