"""visionzoo models against timm's own implementation of the same architecture, with identical weights.

For each pair, in one process: timm's model is built (random init, norm statistics perturbed so no
branch is trivially zero), its ``state_dict`` is saved and loaded into ours through
``create_model(name, checkpoint_path=...)`` (the family's converter), the outputs are compared,
then forward (inference mode, batch 8) and one SGD training step of both models and a 2048^3
GEMM are timed round-robin in the same rounds. Targets (issue "MaxViT, HaloNet and SHViT"):
forward >= 1.1x timm's img/s, training step >= 1.0x, outputs equal to 1e-4, and maxvit_tiny
forward >= 45 % of the same-round GEMM FLOP rate.

    python -m benchmarks.bench_timm_pairs                 # every pair
    python -m benchmarks.bench_timm_pairs --pair shvit_s4 --rounds 5
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch

import visionzoo

from . import harness


@dataclass(frozen=True)
class Pair:
    ours: str
    theirs: str
    img_size: int
    #: minimum forward share of the same-round GEMM FLOP rate, if the issue sets one
    min_pct_gemm: float | None = None
    kwargs: dict = field(default_factory=dict)


PAIRS = [
    Pair("shvit_s4", "shvit_s4", 256),
    Pair("se_resnet50", "legacy_seresnet50", 224),  # the "one more of your choice": SENet's timm port
    Pair("maxvit_tiny", "maxvit_tiny_tf_224", 224, min_pct_gemm=45.0),
    Pair("halonet26t", "halonet26t", 256),
]


def _perturb_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Redraw 1-D norm parameters and statistics (zero-init gammas, identity BN) in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(0.5 + 0.5 * torch.rand(m.weight.shape, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                if getattr(m, "running_var", None) is not None:
                    m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def build_pair(pair: Pair) -> tuple[torch.nn.Module, torch.nn.Module]:
    """timm's model and ours with the same weights (ours loaded through its converter)."""
    torch.manual_seed(0)
    theirs = timm.create_model(pair.theirs, **pair.kwargs)
    _perturb_norms(theirs)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timm.pth"
        torch.save(theirs.state_dict(), path)
        ours = visionzoo.create_model(pair.ours, checkpoint_path=path, **pair.kwargs)
    return ours, theirs


def max_abs_diff(a: torch.nn.Module, b: torch.nn.Module, img_size: int) -> float:
    x = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return float((a.eval()(x) - b.eval()(x)).abs().max())


def bench_pair(pair: Pair, rounds: int, batch: int = 8) -> dict:
    ours, theirs = build_pair(pair)
    diff = max_abs_diff(ours, theirs, pair.img_size)
    calls = {f"{who}/{mode}": harness.model_call(lambda m=m: m, batch, pair.img_size, train=(mode == "train"))
             for who, m in (("ours", ours), ("timm", theirs)) for mode in ("fwd", "train")}
    fwd_gflops = harness.count_gflops(calls["timm/fwd"]) / batch
    t = harness.time_variants(calls, rounds=rounds)
    gemm = harness.gemm_gflops(t)
    ips = {k: batch / (v.median_ms * 1e-3) for k, v in t.items() if k != "gemm"}
    pct = 100 * ips["ours/fwd"] * fwd_gflops / gemm
    row = dict(pair=f"{pair.ours} vs timm {pair.theirs}", img=pair.img_size, B=batch, max_abs_diff=diff,
               gflops_per_img=fwd_gflops, ours_fwd_img_s=ips["ours/fwd"], timm_fwd_img_s=ips["timm/fwd"],
               fwd_speedup=ips["ours/fwd"] / ips["timm/fwd"], ours_train_img_s=ips["ours/train"],
               timm_train_img_s=ips["timm/train"], train_speedup=ips["ours/train"] / ips["timm/train"],
               ours_fwd_pct_gemm=pct, timm_fwd_pct_gemm=100 * ips["timm/fwd"] * fwd_gflops / gemm,
               gemm_gflops=gemm, quiet=min(f"{v.quiet_rounds}/{v.rounds}" for v in t.values()))
    ok = [diff <= 1e-4, row["fwd_speedup"] >= 1.1, row["train_speedup"] >= 1.0]
    if pair.min_pct_gemm is not None:
        ok.append(pct >= pair.min_pct_gemm)
    row["targets_met"] = "yes" if all(ok) else "NO"
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair", action="append", default=[], help="our model name (default: every pair)")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    pairs = [q for q in PAIRS if not args.pair or q.ours in args.pair]
    if not pairs:
        raise SystemExit(f"--pair: unknown {args.pair}; known: {[q.ours for q in PAIRS]}")
    rows = []
    for pair in pairs:
        rows.append(bench_pair(pair, args.rounds))
        print(harness.markdown_table(rows[-1:], list(rows[-1])).splitlines()[-1], file=sys.stderr)
    print(harness.markdown_table(rows, list(rows[0])))
    path = harness.write_json("timm_pairs", dict(machine=harness.machine_info(), rounds=args.rounds, rows=rows))
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
