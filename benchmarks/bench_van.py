"""VAN inference on CPU: the fused eval path (BatchNorm pre-norms folded into proj_1 / fc1, GELU as oneDNN
post-ops, layer scale and shortcuts summed in the GEMMs) against the same model with the fast paths off.

    .venv/bin/python benchmarks/bench_van.py [--name van_b1] [--batch 8] [--size 224] [--rounds 8]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default="van_b1")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=8)
    args = p.parse_args(argv)
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
