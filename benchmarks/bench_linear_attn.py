"""Focused linear attention on CPU: visionzoo ``cpu`` vs the official FLatten formulation written plainly in
PyTorch (its May-2024 normalised form, focusing included) at FLatten-PVT-T stage shapes, and vs dense
``scaled_dot_product_attention`` at 112 x 112 tokens.

    python -m benchmarks.bench_linear_attn            # 9 rounds
    python -m benchmarks.bench_linear_attn --quick    # 5 rounds
    python -m benchmarks.bench_linear_attn --threads 1   # one torch thread (steadier on a shared host)

Stage shapes (batch 8, fp32, p = 3, learnable scale and positional encoding, n = N as FLatten-PVT's
``la_sr_ratios='1111'``): 56 x 56 tokens C = 64 one head; 28 x 28 tokens C = 128 two heads. Both modes of
both variants of one shape are timed in the same rounds (same-run ratios). Peak memory: one call in a
fresh process, RSS above the inputs (``harness.peak_extra_mib``). Dense: one head of 64, batch 2, at 56^2
and 112^2 tokens, forward. Targets: cpu forward >= 1.5x the plain formulation, cpu fwd+bwd <= 3x its
forward, peak memory <= the plain formulation's; >= 20x dense SDPA at 112^2; cost(112^2) / cost(56^2)
<= 4.5 (the token count grows 4x).
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from benchmarks import harness

STAGES = {"stage1": (56, 64, 1), "stage2": (28, 128, 2)}  # map side, C, heads
DENSE_SIDES = (56, 112)
VARIANTS = ("vz_cpu", "plain")
BATCH, DENSE_BATCH, P = 8, 2, 3


def plain_flatten(q, k, v, heads, scale, pos):
    """The official FocusedLinearAttention between the projections (May-2024 form), as its code reads."""
    B, N, C = q.shape
    n = k.shape[1]
    k = k + pos
    s = F.softplus(scale)
    q, k = (F.relu(q) + 1e-6) / s, (F.relu(k) + 1e-6) / s
    q_norm, k_norm = q.norm(dim=-1, keepdim=True), k.norm(dim=-1, keepdim=True)
    q, k = q ** P, k ** P
    q = (q / q.norm(dim=-1, keepdim=True)) * q_norm
    k = (k / k.norm(dim=-1, keepdim=True)) * k_norm
    q, k, v = (t.reshape(B, -1, heads, C // heads).permute(0, 2, 1, 3) for t in (q, k, v))
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    kv = (k.transpose(-2, -1) * (n ** -0.5)) @ (v * (n ** -0.5))
    return (q @ kv * z).transpose(1, 2).reshape(B, N, C)


def _inputs(side, c, batch, grad):
    g = torch.Generator().manual_seed(0)
    N = side * side
    q, k, v = (torch.randn(batch, N, c, generator=g).requires_grad_(grad) for _ in range(3))
    scale = (torch.randn(1, 1, c, generator=g) * 0.5).requires_grad_(grad)
    pos = (torch.randn(1, N, c, generator=g) * 0.5).requires_grad_(grad)
    return q, k, v, scale, pos


def make_call(side: int, c: int, heads: int, variant: str, mode: str, batch: int = BATCH):
    """Zero-argument call of one variant with its inputs bound (also the memory subprocess's factory)."""
    from visionzoo.ops import linear_attn
    grad = mode == "fwd+bwd"
    q, k, v, scale, pos = _inputs(side, c, batch, grad)
    if variant == "vz_cpu":
        def op():
            return linear_attn(q, k, v, num_heads=heads, focusing_factor=P, scale=scale, pos=pos, backend="cpu")
    elif variant == "plain":
        def op():
            return plain_flatten(q, k, v, heads, scale, pos)
    elif variant == "sdpa":
        def op():
            return F.scaled_dot_product_attention(*(t.view(batch, -1, 1, c).transpose(1, 2) for t in (q, k, v)))
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return harness.op_call(op, (q, k, v, scale, pos), mode)


def _max_diff(side, c, heads) -> float:
    from visionzoo.ops import linear_attn
    q, k, v, scale, pos = _inputs(side, c, 2, False)
    with torch.inference_mode():
        ours = linear_attn(q, k, v, num_heads=heads, focusing_factor=P, scale=scale, pos=pos, backend="cpu")
        return (ours - plain_flatten(q, k, v, heads, scale, pos)).abs().max().item()


def bench_stages(rounds: int, memory: bool) -> list[dict]:
    rows = []
    for stage, (side, c, heads) in STAGES.items():
        diff = _max_diff(side, c, heads)
        keys = [f"{v}/{m}" for m in ("fwd", "fwd+bwd") for v in VARIANTS]
        t = harness.time_variants({k: make_call(side, c, heads, *k.split("/")) for k in keys}, rounds=rounds)
        gemm = harness.gemm_gflops(t)
        for key in keys:
            v, mode = key.split("/")
            row = dict(stage=stage, N=side * side, C=c, heads=heads, B=BATCH, mode=mode, variant=v,
                       median_ms=t[key].median_ms, min_ms=t[key].min_ms,
                       x_plain=t[f"plain/{mode}"].median_ms / t[key].median_ms,
                       bwd_over_fwd=t[f"{v}/fwd+bwd"].median_ms / t[f"{v}/fwd"].median_ms if mode == "fwd+bwd"
                       else None, max_diff_vs_plain=diff if v == "vz_cpu" else None,
                       gemm_gflops=gemm, quiet=f"{t[key].quiet_rounds}/{t[key].rounds}")
            if memory:
                row["peak_extra_mib"] = harness.peak_extra_mib(
                    "benchmarks.bench_linear_attn:make_call", dict(side=side, c=c, heads=heads, variant=v, mode=mode))
            rows.append(row)
            print(harness.markdown_table([row], list(row)).splitlines()[-1], file=sys.stderr)
    return rows


def bench_dense(rounds: int) -> list[dict]:
    calls = {f"{v}/{side}": make_call(side, 64, 1, v, "fwd", batch=DENSE_BATCH)
             for side in DENSE_SIDES for v in ("vz_cpu", "sdpa")}
    t = harness.time_variants(calls, rounds=rounds)
    rows = []
    for key in calls:
        v, side = key.split("/")
        rows.append(dict(variant=v, N=int(side) ** 2, C=64, heads=1, B=DENSE_BATCH, mode="fwd",
                         median_ms=t[key].median_ms, min_ms=t[key].min_ms,
                         x_sdpa=t[f"sdpa/{side}"].median_ms / t[key].median_ms,
                         cost_112_over_56=t[f"{v}/112"].median_ms / t[f"{v}/56"].median_ms,
                         gemm_gflops=harness.gemm_gflops(t), quiet=f"{t[key].quiet_rounds}/{t[key].rounds}"))
    return rows


def targets(rows: list[dict], dense: list[dict]) -> list[dict]:
    out = []
    for stage in STAGES:
        def get(v, m):
            return next(r for r in rows if (r["stage"], r["variant"], r["mode"]) == (stage, v, m))
        f, fb = get("vz_cpu", "fwd"), get("vz_cpu", "fwd+bwd")
        out.append(dict(check=f"{stage} fwd x plain", value=f["x_plain"], target="≥ 1.5",
                        met="yes" if f["x_plain"] >= 1.5 else "NO"))
        out.append(dict(check=f"{stage} fwd+bwd / fwd", value=fb["bwd_over_fwd"], target="≤ 3",
                        met="yes" if fb["bwd_over_fwd"] <= 3 else "NO",
                        note=f"plain's own {get('plain', 'fwd+bwd')['bwd_over_fwd']:.3g}, "
                             f"fwd+bwd x plain {fb['x_plain']:.3g}"))
        for mode in ("fwd", "fwd+bwd"):
            ours, plain = get("vz_cpu", mode), get("plain", mode)
            if "peak_extra_mib" in ours:
                out.append(dict(check=f"{stage} peak MiB {mode} (ours)", value=ours["peak_extra_mib"],
                                target=f"≤ {plain['peak_extra_mib']:.3g} (plain)",
                                met="yes" if ours["peak_extra_mib"] <= plain["peak_extra_mib"] else "NO"))
    big = next(r for r in dense if r["variant"] == "vz_cpu" and r["N"] == 112 ** 2)
    out.append(dict(check="112^2 x dense SDPA", value=big["x_sdpa"], target="≥ 20",
                    met="yes" if big["x_sdpa"] >= 20 else "NO"))
    out.append(dict(check="cost 112^2 / 56^2", value=big["cost_112_over_56"], target="≤ 4.5",
                    met="yes" if big["cost_112_over_56"] <= 4.5 else "NO"))
    return out


def main(argv=None):
    args = harness.op_bench_args(__doc__.splitlines()[0], argv, quick_help="5 rounds")
    rounds = args.rounds
    rows = bench_stages(rounds, memory=not args.no_memory)
    dense = bench_dense(max(3, rounds // 2))
    print(harness.markdown_table(rows, ["stage", "N", "C", "heads", "mode", "variant", "median_ms", "min_ms",
                                        "x_plain", "bwd_over_fwd", "peak_extra_mib", "max_diff_vs_plain",
                                        "gemm_gflops", "quiet"]))
    print()
    print(harness.markdown_table(dense, list(dense[0])))
    checks = targets(rows, dense)
    print()
    print(harness.markdown_table(checks, ["check", "value", "target", "met", "note"]))
    path = harness.write_json("linear_attn", dict(machine=harness.machine_info(), rounds=rounds, rows=rows,
                                                  dense=dense, targets=checks))
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
