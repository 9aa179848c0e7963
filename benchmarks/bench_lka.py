"""LKA's two depthwise convolutions on CPU at VAN-b1 stage shapes: visionzoo ``cpu`` vs the reference
(the official ``F.conv2d(groups=C)`` pair), forward and forward+backward.

    python -m benchmarks.bench_lka --threads 1            # 9 rounds
    python -m benchmarks.bench_lka --threads 1 --quick    # 5 rounds

Inputs ``[8, C, H, W]`` NCHW fp32 (C, H = 64, 56 / 128, 28 / 320, 14 / 512, 7), 5x5 then 7x7 dilation 3,
with biases. Both modes of both variants of one shape are timed in the same rounds, so ``x_reference``
(reference time / variant time) and ``fwd+bwd / fwd`` are same-run ratios. Targets: cpu forward >= 1.5x
the reference; cpu fwd+bwd <= 3x its forward (the reference's own ratio is printed beside it).
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks import harness

STAGES = {"stage1": (64, 56), "stage2": (128, 28), "stage3": (320, 14), "stage4": (512, 7)}
VARIANTS = ("vz_cpu", "reference")
BATCH = 8


def make_call(stage: str, variant: str, mode: str, batch: int = BATCH):
    """Zero-argument call of one variant with its inputs bound."""
    from visionzoo.ops import lka

    c, s = STAGES[stage]
    grad = mode == "fwd+bwd"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, s, s, generator=g).requires_grad_(grad)
    w0 = (torch.randn(c, 1, 5, 5, generator=g) / 5).requires_grad_(grad)
    w1 = (torch.randn(c, 1, 7, 7, generator=g) / 7).requires_grad_(grad)
    b0, b1 = (torch.randn(c, generator=g).requires_grad_(grad) for _ in range(2))
    backend = {"vz_cpu": "cpu", "reference": "reference"}[variant]
    return harness.op_call(lambda: lka(x, w0, b0, w1, b1, 3, backend=backend), (x, w0, b0, w1, b1), mode)


def _max_diff(stage: str) -> float:
    from visionzoo.ops import lka

    c, s = STAGES[stage]
    x, w0, w1, b = torch.randn(2, c, s, s), torch.randn(c, 1, 5, 5), torch.randn(c, 1, 7, 7), torch.randn(c)
    with torch.inference_mode():
        return (lka(x, w0, b, w1, b, backend="cpu") - lka(x, w0, b, w1, b, backend="reference")).abs().max().item()


def bench(rounds: int) -> list[dict]:
    rows = []
    for stage, (c, s) in STAGES.items():
        diff = _max_diff(stage)
        keys = [f"{v}/{m}" for m in ("fwd", "fwd+bwd") for v in VARIANTS]
        t = harness.time_variants({k: make_call(stage, *k.split("/")) for k in keys}, rounds=rounds)
        gemm = harness.gemm_gflops(t)
        for key in keys:
            v, mode = key.split("/")
            row = {
                "stage": stage,
                "C": c,
                "HW": s,
                "B": BATCH,
                "mode": mode,
                "variant": v,
                "median_ms": t[key].median_ms,
                "min_ms": t[key].min_ms,
                "x_reference": t[f"reference/{mode}"].median_ms / t[key].median_ms,
                "bwd_over_fwd": t[f"{v}/fwd+bwd"].median_ms / t[f"{v}/fwd"].median_ms if mode == "fwd+bwd" else None,
                "max_diff_vs_reference": diff if v == "vz_cpu" else None,
                "gemm_gflops": gemm,
                "quiet": f"{t[key].quiet_rounds}/{t[key].rounds}",
            }
            rows.append(row)
            print(harness.markdown_table([row], list(row)).splitlines()[-1], file=sys.stderr)
    return rows


def targets(rows: list[dict]) -> list[dict]:
    out = []
    for stage in STAGES:

        def get(v, m, stage=stage):
            return next(r for r in rows if (r["stage"], r["variant"], r["mode"]) == (stage, v, m))

        f, fb, rfb = get("vz_cpu", "fwd"), get("vz_cpu", "fwd+bwd"), get("reference", "fwd+bwd")
        out.append(
            {
                "check": "fwd x reference",
                "stage": stage,
                "value": f["x_reference"],
                "target": "≥ 1.5",
                "met": "yes" if f["x_reference"] >= 1.5 else "NO",
            }
        )
        out.append(
            {
                "check": "fwd+bwd / fwd",
                "stage": stage,
                "value": fb["bwd_over_fwd"],
                "target": "≤ 3",
                "met": "yes" if fb["bwd_over_fwd"] <= 3 else "NO",
                "reference_own": rfb["bwd_over_fwd"],
                "fwd_bwd_x_reference": fb["x_reference"],
            }
        )
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="5 rounds")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default torch's); on a shared 2-core host 1 thread gives steadier ratios",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (5 if args.quick else 9)
    rows = bench(rounds)
    cols = [
        "stage",
        "C",
        "HW",
        "mode",
        "variant",
        "median_ms",
        "min_ms",
        "x_reference",
        "bwd_over_fwd",
        "max_diff_vs_reference",
        "gemm_gflops",
        "quiet",
    ]
    print(harness.markdown_table(rows, cols))
    checks = targets(rows)
    print()
    print(harness.markdown_table(checks, list(checks[1])))
    path = harness.write_json(
        "lka", {"machine": harness.machine_info(), "rounds": rounds, "rows": rows, "targets": checks}
    )
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
