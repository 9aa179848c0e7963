"""FLatten models on CPU: forward img/s against the timm models they modify (eval, inference mode, same rounds).

    .venv/bin/python benchmarks/bench_flatten.py [--batch 8] [--rounds 5] [--warmup 2] [--pairs 0 1 2]

Rows (targets from issue 15): ``flatten_swin_tiny`` vs timm ``swin_tiny_patch4_window7_224`` at 224
(>= 1.0x) and at 448 (>= 1.3x; both models built for 448: timm's Swin with ``img_size=448``, ours with
``img_size=448``, so neither interpolates position tables per call), and ``flatten_pvt_v2_b2`` vs timm
``pvt_v2_b2`` at 224 (>= 1.0x). Random weights: only the speed is compared. Every pair and the GEMM
yardstick are timed round-robin in the same rounds (``harness.time_variants``); ratios of medians.
Results go to ``benchmarks/results/flatten.json``.
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

#: (ours, our kwargs, timm anchor, timm kwargs, input size, target speed-up)
PAIRS = [
    ("flatten_swin_tiny", {}, "swin_tiny_patch4_window7_224", {}, 224, 1.0),
    ("flatten_swin_tiny", dict(img_size=448), "swin_tiny_patch4_window7_224", dict(img_size=448), 448, 1.3),
    ("flatten_pvt_v2_b2", {}, "pvt_v2_b2", {}, 224, 1.0),
]


def main(argv=None) -> int:
    import timm

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per variant")
    p.add_argument("--pairs", type=int, nargs="*", default=list(range(len(PAIRS))), help="indices into PAIRS")
    args = p.parse_args(argv)
    rows = []
    for ours, our_kw, anchor, anchor_kw, size, target in (PAIRS[i] for i in args.pairs):
        torch.manual_seed(0)
        calls = {ours: model_call(lambda: visionzoo.create_model(ours, **our_kw), args.batch, size),
                 anchor: model_call(lambda: timm.create_model(anchor, **anchor_kw), args.batch, size)}
        t = time_variants(calls, rounds=args.rounds, warmup=args.warmup)
        ips = {k: args.batch / t[k].median_ms * 1e3 for k in calls}
        speedup = ips[ours] / ips[anchor]
        rows.append(dict(model=ours, anchor=anchor, img=size, B=args.batch, img_s=ips[ours], anchor_img_s=ips[anchor],
                         speedup=speedup, target=target, met="yes" if speedup >= target else "NO",
                         gemm_gflops=harness.gemm_gflops(t),
                         quiet=min(f"{v.quiet_rounds}/{v.rounds}" for v in t.values())))
        print(markdown_table(rows[-1:], list(rows[-1])).splitlines()[-1], file=sys.stderr)
    print("FLatten models forward vs timm anchors (eval, inference mode, CPU)\n")
    print(markdown_table(rows, list(rows[0])))
    write_json("flatten" if len(rows) == len(PAIRS) else "flatten_partial",
               dict(machine=machine_info(), rounds=args.rounds, warmup=args.warmup, batch=args.batch, forward=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
