"""Agent attention on CPU at Agent-PVT-T stage shapes: the block's attention computation with visionzoo's
``cpu`` backend vs the official formulation written plainly in PyTorch, and vs dense SDPA.

    python -m benchmarks.bench_agent_attn            # 9 rounds
    python -m benchmarks.bench_agent_attn --quick    # 5 rounds, stage 1 only
    python -m benchmarks.bench_agent_attn --threads 1   # one torch thread (steadier on a shared host)

Inputs: ``q, k, v`` as the ``qkv`` projection gives them (``[8, H, W, C]`` views of one tensor, fp32) and an
:class:`~visionzoo.blocks.agent_attn.AgentAttn`'s parameters (Agent-PVT-T: C, map, heads, agents = 64, 56,
1, 9 / 128, 28, 2, 16 / 320, 14, 5, 49 / 512, 7, 8, 49). Timed from there to the output before ``proj``:

* ``plain``: the official code's steps: agents pooled from q, ``an_bias``/``na_bias`` bilinearly
  interpolated and the biases ``.repeat``-ed over the batch, two softmax attentions with explicit
  ``@`` products, ``+ dwc(v)``;
* ``vz_cpu``: what :class:`AgentAttn` runs (:meth:`AgentAttn.mix`): agents pooled, the block's biases
  (cached in inference, rebuilt under autograd), :func:`visionzoo.ops.agent_attn` with ``backend="cpu"``,
  ``+ dwc(v)``;
* ``vz_reference``: the same with the reference backend;
* ``dense_sdpa``: ``scaled_dot_product_attention`` over all ``H W`` tokens (no bias, no dwc);
* ``op_cpu``: :func:`visionzoo.ops.agent_attn` alone (``backend="cpu"``) on heads-first contiguous
  ``q, k, v``, given agents and biases: the op's own fwd+bwd / fwd, without the block's shared steps.

All variants of one stage and both modes are timed in the same rounds (same-run ratios). Targets
(stage 1): ``vz_cpu`` forward >= 1.5x ``plain``; ``vz_cpu`` fwd+bwd <= 3x its forward; peak memory (forward
and fwd+bwd) <= ``plain``'s; forward >= 10x dense SDPA.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from benchmarks import harness

STAGES = {"stage1": (64, 56, 1, 9), "stage2": (128, 28, 2, 16), "stage3": (320, 14, 5, 49), "stage4": (512, 7, 8, 49)}
VARIANTS = ("vz_cpu", "plain", "vz_reference", "dense_sdpa", "op_cpu")
BATCH = 8


def _plain(m, q, k, v):
    """The official AgentAttention steps from q, k, v ``[b, n, c]`` to the output before ``proj``."""
    b, n, c = q.shape
    (h, w), heads, na = m.map_size, m.num_heads, m.agent_num
    hd = c // heads
    agents = F.adaptive_avg_pool2d(q.reshape(b, h, w, c).permute(0, 3, 1, 2), m.pool_size)
    agents = agents.reshape(b, c, -1).permute(0, 2, 1).reshape(b, na, heads, hd).permute(0, 2, 1, 3)
    q, k, v = (t.reshape(b, n, heads, hd).permute(0, 2, 1, 3) for t in (q, k, v))
    pb = F.interpolate(m.an_bias, size=(h, w), mode="bilinear").reshape(1, heads, na, -1).repeat(b, 1, 1, 1)
    pb = pb + (m.ah_bias + m.aw_bias).reshape(1, heads, na, -1).repeat(b, 1, 1, 1)
    agent_v = ((agents * m.scale) @ k.transpose(-2, -1) + pb).softmax(-1) @ v
    ab = F.interpolate(m.na_bias, size=(h, w), mode="bilinear").reshape(1, heads, na, -1).permute(0, 1, 3, 2)
    ab = ab.repeat(b, 1, 1, 1) + (m.ha_bias + m.wa_bias).reshape(1, heads, -1, na).repeat(b, 1, 1, 1)
    x = (((q * m.scale) @ agents.transpose(-2, -1) + ab).softmax(-1) @ agent_v).transpose(1, 2).reshape(b, n, c)
    return x + m.dwc(v.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, n, c)


def make_call(stage: str, variant: str, mode: str, batch: int = BATCH):
    """Zero-argument call of one variant with its inputs bound."""
    from visionzoo.blocks.agent_attn import AgentAttn
    c, s, heads, agents = STAGES[stage]
    torch.manual_seed(0)
    m = AgentAttn(c, heads, map_size=(s, s), agent_num=agents)
    grad = mode == "fwd+bwd"
    m.requires_grad_(grad)
    qkv = torch.randn(batch, s, s, 3 * c).requires_grad_(grad)
    leaves = (qkv, *m.parameters()) if grad else (qkv,)

    def split():
        return qkv.unflatten(-1, (3, c)).unbind(-2)
    if variant == "op_cpu":  # the op alone, on its own inputs (agents and biases given): what the op costs
        from visionzoo.ops import agent_attn
        qkv.requires_grad_(False)
        hd = c // heads
        q, k, v = (t.reshape(batch, s * s, heads, hd).transpose(1, 2).contiguous().requires_grad_(grad)
                   for t in split())
        a = torch.randn(batch, heads, agents, hd).requires_grad_(grad)
        with torch.no_grad():
            bkv, bq = (b.clone().requires_grad_(grad) for b in m.build_biases(s, s))
        return harness.op_call(lambda: agent_attn(q, k, v, a, bkv, bq, backend="cpu"), (q, k, v, a, bkv, bq), mode)
    if variant == "plain":
        def op():
            q, k, v = (t.reshape(batch, s * s, c) for t in split())
            return _plain(m, q, k, v)
    elif variant == "dense_sdpa":
        def op():
            q, k, v = (t.reshape(batch, s * s, heads, c // heads).transpose(1, 2) for t in split())
            return F.scaled_dot_product_attention(q, k, v)
    else:
        m.backend = {"vz_cpu": "cpu", "vz_reference": "reference"}[variant]

        def op():
            return m.mix(*split())
    return harness.op_call(op, leaves, mode)


def _max_diff(stage: str) -> float:
    from visionzoo.blocks.agent_attn import AgentAttn
    c, s, heads, agents = STAGES[stage]
    m = AgentAttn(c, heads, map_size=(s, s), agent_num=agents)
    q, k, v = torch.randn(3, 2, s, s, c).unbind(0)
    with torch.inference_mode():
        plain = _plain(m, *(t.reshape(2, s * s, c) for t in (q, k, v))).reshape(2, s, s, c)
        m.backend = "cpu"
        return (m.mix(q, k, v) - plain).abs().max().item()


def bench(rounds: int, stages, memory: bool) -> list[dict]:
    rows = []
    for stage in stages:
        c, s, heads, agents = STAGES[stage]
        diff = _max_diff(stage)
        keys = [f"{v}/{m}" for m in ("fwd", "fwd+bwd") for v in VARIANTS]
        t = harness.time_variants({k: make_call(stage, *k.split("/")) for k in keys}, rounds=rounds)
        gemm = harness.gemm_gflops(t)
        for key in keys:
            v, mode = key.split("/")
            row = dict(stage=stage, C=c, HW=s, heads=heads, agents=agents, B=BATCH, mode=mode, variant=v,
                       median_ms=t[key].median_ms, min_ms=t[key].min_ms,
                       x_plain=t[f"plain/{mode}"].median_ms / t[key].median_ms,
                       x_dense=t[f"dense_sdpa/{mode}"].median_ms / t[key].median_ms,
                       bwd_over_fwd=t[f"{v}/fwd+bwd"].median_ms / t[f"{v}/fwd"].median_ms if mode == "fwd+bwd"
                       else None, max_diff_vs_plain=diff if v == "vz_cpu" else None,
                       gemm_gflops=gemm, quiet=f"{t[key].quiet_rounds}/{t[key].rounds}")
            if memory and stage == "stage1" and v in ("vz_cpu", "plain"):
                row["peak_extra_mib"] = harness.peak_extra_mib("benchmarks.bench_agent_attn:make_call",
                                                               dict(stage=stage, variant=v, mode=mode))
            rows.append(row)
            print(harness.markdown_table([row], list(row)).splitlines()[-1], file=sys.stderr)
    return rows


def targets(rows: list[dict]) -> list[dict]:
    def get(v, m):
        return next(r for r in rows if (r["stage"], r["variant"], r["mode"]) == ("stage1", v, m))
    f, fb, pf, pfb = get("vz_cpu", "fwd"), get("vz_cpu", "fwd+bwd"), get("plain", "fwd"), get("plain", "fwd+bwd")
    out = [dict(check="stage1 fwd x plain", value=f["x_plain"], target="≥ 1.5"),
           dict(check="stage1 fwd+bwd / fwd", value=fb["bwd_over_fwd"], target="≤ 3",
                plain_own=pfb["bwd_over_fwd"]),
           dict(check="stage1 fwd x dense SDPA", value=f["x_dense"], target="≥ 10"),
           dict(check="stage1 op alone: fwd+bwd / fwd", value=get("op_cpu", "fwd+bwd")["bwd_over_fwd"],
                target="≤ 3")]
    for mode, ours, plain in (("fwd", f, pf), ("fwd+bwd", fb, pfb)):
        if "peak_extra_mib" in ours:
            out.append(dict(check=f"stage1 peak MiB {mode} (ours / plain)", value=ours["peak_extra_mib"],
                            target=f"≤ {plain['peak_extra_mib']:.3g}"))
    for r in out:
        bound = float(r["target"].split()[-1])
        r["met"] = "yes" if (r["value"] >= bound if "≥" in r["target"] else r["value"] <= bound) else "NO"
    return out


def main(argv=None):
    args = harness.op_bench_args(__doc__.splitlines()[0], argv, quick_help="5 rounds, stage 1 only")
    rounds = args.rounds
    stages = ["stage1"] if args.quick else list(STAGES)
    rows = bench(rounds, stages, memory=not args.no_memory)
    cols = ["stage", "C", "HW", "heads", "agents", "mode", "variant", "median_ms", "min_ms", "x_plain", "x_dense",
            "bwd_over_fwd", "peak_extra_mib", "max_diff_vs_plain", "gemm_gflops", "quiet"]
    print(harness.markdown_table(rows, cols))
    checks = targets(rows)
    print()
    print(harness.markdown_table(checks, ["check", "value", "target", "met", "plain_own"]))
    path = harness.write_json("agent_attn", dict(machine=harness.machine_info(), rounds=rounds, rows=rows,
                                                 targets=checks))
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
