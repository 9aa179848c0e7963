"""Cross-shaped window attention and the CSWin models on CPU (one torch thread by default; same-run ratios).

    python -m benchmarks.bench_cswin                  # 9 rounds, op and models
    python -m benchmarks.bench_cswin --quick          # 5 rounds, op only
    python -m benchmarks.bench_cswin --no-models      # op only

Op rows: CSWin-T stage shapes (batch 8; stage 1: C 64, 56x56, 2 heads, stripes of 1; stage 3: C 256, 14x14, 8
heads, stripes of 7), from the ``qkv`` projection's output ``[8, H, W, 3C]`` to the input of ``proj``:

* ``vz_cpu``: :meth:`CrossShapedWindowAttn.mix` with the ``cpu`` backend (whole stripes: two batched GEMMs around
  one softmax per branch, :func:`~visionzoo.blocks.cswin_attn.stripe_attention`; LePE per stripe);
* ``vz_na2d``: the same through ``na2d``'s ``cpu`` backend (the fast path switched off);
* ``plain``: the official formulation written plainly: ``img2windows`` partition of q / k / v per branch, LePE
  convolved on the partitioned windows, ``F.scaled_dot_product_attention``, ``windows2img``, branches concatenated.

Targets (issue 18): ``vz_cpu`` forward >= 1.5x ``plain`` at both stages; ``vz_cpu`` fwd+bwd <= 3x its forward.
Model rows: ``agent_cswin_tiny`` and ``flatten_cswin_tiny`` forward img/s at 224 (batch 8, eval, inference mode)
vs timm ``swin_tiny_patch4_window7_224`` in the same rounds (target >= 1.0x). Random weights: speed only.
Results: ``benchmarks/results/cswin.json``.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from benchmarks import harness

#: stage -> (C, map side, heads, stripe width): CSWin-T
STAGES = {"stage1": (64, 56, 2, 1), "stage3": (256, 14, 8, 7)}
VARIANTS = ("vz_cpu", "vz_na2d", "plain")
BATCH = 8
MODELS = [("agent_cswin_tiny", "swin_tiny_patch4_window7_224"), ("flatten_cswin_tiny", "swin_tiny_patch4_window7_224")]


def plain(m, qkv: torch.Tensor) -> torch.Tensor:
    """The official ``LePEAttention`` pair (``im2cswin`` / ``get_lepe`` / attention / ``windows2img``) from
    ``qkv [B, H, W, 3C]`` to the concatenated branch outputs ``[B, H, W, C]``, attention by SDPA."""
    B, H, W, C3 = qkv.shape
    C = C3 // 3
    c, heads = C // 2, m.num_heads // 2
    d, sw = c // heads, m.split_size
    outs = []
    for i, (wh, ww) in enumerate([(H, sw), (sw, W)]):
        q, k, v = (qkv[..., j * C + i * c:j * C + (i + 1) * c].permute(0, 3, 1, 2) for j in range(3))  # B c H W

        def im2cswin(x):
            x = x.reshape(B, c, H // wh, wh, W // ww, ww).permute(0, 2, 4, 3, 5, 1).reshape(-1, wh * ww, c)
            return x.reshape(-1, wh * ww, heads, d).permute(0, 2, 1, 3)
        vx = v.reshape(B, c, H // wh, wh, W // ww, ww).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, wh, ww)
        lepe = F.conv2d(vx, m.lepe.weight[i * c:(i + 1) * c], m.lepe.bias[i * c:(i + 1) * c], padding=1, groups=c)
        lepe = lepe.reshape(-1, heads, d, wh * ww).permute(0, 1, 3, 2)
        vw = vx.reshape(-1, heads, d, wh * ww).permute(0, 1, 3, 2)
        x = F.scaled_dot_product_attention(im2cswin(q), im2cswin(k), vw, scale=m.scale) + lepe
        x = x.transpose(1, 2).reshape(-1, wh * ww, c)
        outs.append(x.reshape(B, H // wh, W // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, c))
    return torch.cat(outs, -1)


def make_call(stage: str, variant: str, mode: str, batch: int = BATCH):
    from visionzoo.blocks import cswin_attn

    c, s, heads, sw = STAGES[stage]
    torch.manual_seed(0)
    m = cswin_attn.CrossShapedWindowAttn(c, heads, split_size=sw, backend="cpu")
    grad = mode == "fwd+bwd"
    m.requires_grad_(grad)
    qkv = torch.randn(batch, s, s, 3 * c).requires_grad_(grad)
    leaves = (qkv, *m.parameters()) if grad else (qkv,)
    if variant == "plain":
        return harness.op_call(lambda: plain(m, qkv), leaves, mode)
    if variant == "vz_cpu":
        return harness.op_call(lambda: m.mix(qkv), leaves, mode)

    def via_na2d():
        saved, cswin_attn.FAST_MAX_TOKENS = cswin_attn.FAST_MAX_TOKENS, 0
        try:
            return m.mix(qkv)
        finally:
            cswin_attn.FAST_MAX_TOKENS = saved
    return harness.op_call(via_na2d, leaves, mode)


def _max_diff(stage: str) -> float:
    from visionzoo.blocks.cswin_attn import CrossShapedWindowAttn
    c, s, heads, sw = STAGES[stage]
    m = CrossShapedWindowAttn(c, heads, split_size=sw, backend="cpu")
    qkv = torch.randn(2, s, s, 3 * c)
    with torch.inference_mode():
        return (m.mix(qkv) - plain(m, qkv)).abs().max().item()


def bench_op(rounds: int, stages) -> list[dict]:
    rows = []
    for stage in stages:
        c, s, heads, sw = STAGES[stage]
        diff = _max_diff(stage)
        keys = [f"{v}/{m}" for m in ("fwd", "fwd+bwd") for v in VARIANTS]
        t = harness.time_variants({k: make_call(stage, *k.split("/")) for k in keys}, rounds=rounds)
        for key in keys:
            v, mode = key.split("/")
            row = dict(stage=stage, C=c, HW=s, heads=heads, split=sw, B=BATCH, mode=mode, variant=v,
                       median_ms=t[key].median_ms, min_ms=t[key].min_ms,
                       x_plain=t[f"plain/{mode}"].median_ms / t[key].median_ms,
                       bwd_over_fwd=t[f"{v}/fwd+bwd"].median_ms / t[f"{v}/fwd"].median_ms if mode == "fwd+bwd"
                       else None, max_diff_vs_plain=diff if v == "vz_cpu" else None,
                       gemm_gflops=harness.gemm_gflops(t), quiet=f"{t[key].quiet_rounds}/{t[key].rounds}")
            rows.append(row)
            print(harness.markdown_table([row], list(row)).splitlines()[-1], file=sys.stderr)
    return rows


def bench_models(rounds: int, batch: int = BATCH, size: int = 224) -> list[dict]:
    import timm

    import visionzoo
    torch.manual_seed(0)
    calls = {name: harness.model_call(lambda n=name: visionzoo.create_model(n), batch, size) for name, _ in MODELS}
    anchors = {a for _, a in MODELS}
    calls.update({a: harness.model_call(lambda a=a: timm.create_model(a), batch, size) for a in anchors})
    t = harness.time_variants(calls, rounds=rounds, warmup=1)
    ips = {k: batch / t[k].median_ms * 1e3 for k in calls}
    return [dict(model=ours, anchor=anchor, img=size, B=batch, img_s=ips[ours], anchor_img_s=ips[anchor],
                 speedup=ips[ours] / ips[anchor], target=1.0, met="yes" if ips[ours] >= ips[anchor] else "NO",
                 gemm_gflops=harness.gemm_gflops(t), quiet=f"{t[ours].quiet_rounds}/{t[ours].rounds}")
            for ours, anchor in MODELS]


def targets(rows: list[dict]) -> list[dict]:
    out = []
    for stage in STAGES:
        got = {(r["variant"], r["mode"]): r for r in rows if r["stage"] == stage}
        if not got:
            continue
        out.append(dict(check=f"{stage} fwd x plain", value=got["vz_cpu", "fwd"]["x_plain"], target="≥ 1.5"))
        out.append(dict(check=f"{stage} fwd+bwd / fwd", value=got["vz_cpu", "fwd+bwd"]["bwd_over_fwd"], target="≤ 3",
                        plain_own=got["plain", "fwd+bwd"]["bwd_over_fwd"]))
    for r in out:
        bound = float(r["target"].split()[-1])
        r["met"] = "yes" if (r["value"] >= bound if "≥" in r["target"] else r["value"] <= bound) else "NO"
    return out


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    models = "--no-models" not in argv
    argv = [a for a in argv if a != "--no-models"]
    if "--threads" not in argv:
        argv += ["--threads", "1"]
    args = harness.op_bench_args(__doc__.splitlines()[0], argv, quick_help="5 rounds, op only")
    rows = bench_op(args.rounds, list(STAGES))
    print(harness.markdown_table(rows, ["stage", "C", "HW", "heads", "split", "mode", "variant", "median_ms",
                                        "min_ms", "x_plain", "bwd_over_fwd", "max_diff_vs_plain", "gemm_gflops",
                                        "quiet"]))
    checks = targets(rows)
    print()
    print(harness.markdown_table(checks, ["check", "value", "target", "met", "plain_own"]))
    model_rows = bench_models(args.rounds) if models and not args.quick else []
    if model_rows:
        print()
        print(harness.markdown_table(model_rows, list(model_rows[0])))
    path = harness.write_json("cswin", dict(machine=harness.machine_info(), rounds=args.rounds, rows=rows,
                                            targets=checks, models=model_rows))
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
