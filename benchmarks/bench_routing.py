"""Bi-level routing attention on CPU at BiFormer-tiny shapes: visionzoo ``cpu`` vs the official gather
formulation vs dense SDPA; then ``biformer_tiny`` whole-model throughput and training memory.

    python -m benchmarks.bench_routing            # full run
    python -m benchmarks.bench_routing --quick    # batch 8 only, fewer rounds

Op variants, on ``[B, H, W, heads, 32]`` q/k/v with the official scale ``(heads * 32) ** -0.5``,
routing included in every timed call:

* ``vz_cpu``: ``visionzoo.ops.routing.bra(backend="cpu")``;
* ``official_gather``: the official ``bra_legacy`` algorithm, written out here: region-major
  layout, ``torch.gather`` of the routed K/V from an expanded view (the ``topk``-fold copy), then
  explicit matmul, softmax, matmul;
* ``dense_sdpa``: ``F.scaled_dot_product_attention`` over all tokens (what every ratio is against).

Model rows: ``biformer_tiny`` forward images/s at batch 8, 224 (share of the same-round GEMM), and
peak extra memory of one training step (forward + backward) at 224 and 512x384, visionzoo ``cpu``
against the ``reference`` backend, whose gather has the official code's ``topk``-fold memory.
"""
from __future__ import annotations

import argparse
import sys

import torch

from benchmarks import harness

STAGES = {  # name: (H = W, heads, head dim, topks)
    "stage1": (56, 2, 32, (1, 2, 4)),
    "stage3": (14, 8, 32, (16,)),
}
N_WIN = 7
VARIANTS = ("vz_cpu", "official_gather", "dense_sdpa")


def official_gather(q, k, v, n_win: int, topk: int, scale: float):
    """The official bra_legacy algorithm on ``[B, H, W, heads, D]`` (divisible maps)."""
    B, H, W, heads, D = q.shape
    rh, rw = H // n_win, W // n_win
    R, T = n_win * n_win, rh * rw

    def regions(t):
        return t.reshape(B, n_win, rh, n_win, rw, -1).transpose(2, 3).reshape(B, R, T, t.shape[-2] * t.shape[-1])

    qr, kr, vr = regions(q), regions(k), regions(v)
    with torch.no_grad():
        idx = torch.topk((qr.mean(2) * scale) @ kr.mean(2).transpose(1, 2), topk, dim=-1).indices
    kv = torch.cat([kr, vr], -1)
    c = kv.shape[-1]
    sel = torch.gather(kv.view(B, 1, R, T, c).expand(-1, R, -1, -1, -1), 2,
                       idx.view(B, R, topk, 1, 1).expand(-1, -1, -1, T, c))  # [B, R, topk, T, c]
    ks, vs = sel.split([heads * D, heads * D], -1)
    ks = ks.reshape(B * R, topk * T, heads, D).permute(0, 2, 3, 1)  # [BR, heads, D, topk*T]
    vs = vs.reshape(B * R, topk * T, heads, D).transpose(1, 2)
    qh = qr.reshape(B * R, T, heads, D).transpose(1, 2)
    attn = ((qh * scale) @ ks).softmax(-1)
    out = (attn @ vs).transpose(1, 2).reshape(B, n_win, n_win, rh, rw, heads, D)
    return out.transpose(2, 3).reshape(B, H, W, heads, D)


def make_call(stage: str, batch: int, topk: int, variant: str, mode: str):
    """Zero-argument call of one variant with its inputs bound (also used by the memory subprocess)."""
    side, heads, dim, _ = STAGES[stage]
    grad = mode == "fwd+bwd"
    q, k, v = (torch.randn(batch, side, side, heads, dim, requires_grad=grad) for _ in range(3))
    scale = (heads * dim) ** -0.5
    if variant == "vz_cpu":
        from visionzoo.ops.routing import bra
        op = lambda: bra(q, k, v, N_WIN, topk, scale=scale, backend="cpu")  # noqa: E731
    elif variant == "official_gather":
        op = lambda: official_gather(q, k, v, N_WIN, topk, scale)  # noqa: E731
    elif variant == "dense_sdpa":
        op = lambda: harness.dense_sdpa(q, k, v, scale)  # noqa: E731
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return harness.op_call(op, (q, k, v), mode)


def _max_diff(stage: str, topk: int) -> float:
    from visionzoo.ops.routing import bra
    side, heads, dim, _ = STAGES[stage]
    q, k, v = (torch.randn(2, side, side, heads, dim) for _ in range(3))
    scale = (heads * dim) ** -0.5
    with torch.inference_mode():
        return (bra(q, k, v, N_WIN, topk, scale=scale, backend="cpu") - official_gather(q, k, v, N_WIN, topk, scale)
                ).abs().max().item()


def bench_op(batches, modes, rounds: int, memory=VARIANTS) -> list[dict]:
    rows = []
    for stage, (side, heads, dim, topks) in STAGES.items():
        for batch in batches:
            for topk in topks:
                out_mib = batch * side * side * heads * dim * 4 / 2 ** 20
                diff = _max_diff(stage, topk)
                keys = [f"{v}/{mode}" for mode in modes for v in VARIANTS]
                t = harness.time_variants({key: make_call(stage, batch, topk, *key.split("/")) for key in keys},
                                          rounds=rounds)
                gemm = harness.gemm_gflops(t)
                for key in keys:
                    v, mode = key.split("/")
                    row = dict(stage=stage, B=batch, topk=topk, mode=mode, variant=v, median_ms=t[key].median_ms,
                               min_ms=t[key].min_ms, t_over_dense=t[key].median_ms / t[f"dense_sdpa/{mode}"].median_ms,
                               x_official=t[f"official_gather/{mode}"].median_ms / t[key].median_ms,
                               quiet=f"{t[key].quiet_rounds}/{t[key].rounds}", gemm_gflops=gemm,
                               max_diff_vs_official=diff if v == "vz_cpu" else None)
                    if v in memory:
                        extra = harness.peak_extra_mib("benchmarks.bench_routing:make_call",
                                                       dict(stage=stage, batch=batch, topk=topk, variant=v, mode=mode))
                        row.update(peak_extra_mib=extra, peak_over_out=extra / out_mib)
                    rows.append(row)
                    print(harness.markdown_table([row], list(row)).splitlines()[-1], file=sys.stderr)
    return rows


def biformer_tiny() -> torch.nn.Module:
    import visionzoo
    return visionzoo.create_model("biformer_tiny")


def train_step(height: int, width: int, backend: str, batch: int = 2):
    """One forward + backward of ``biformer_tiny`` with the given backend (for the memory subprocess)."""
    import visionzoo
    model = visionzoo.create_model("biformer_tiny").train()
    x = torch.randn(batch, 3, height, width)

    def step():
        with visionzoo.use_backend(backend):
            model(x).mean().backward()
        model.zero_grad(set_to_none=True)
    return step


def bench_model(rounds: int) -> tuple[list[dict], list[dict]]:
    from visionzoo.ops import use_backend
    call = harness.model_call(biformer_tiny, 8, 224)
    with use_backend("reference"):
        gflops = harness.count_gflops(call)
    t = harness.time_variants({"biformer_tiny": call}, rounds=rounds)
    gemm = harness.gemm_gflops(t)
    achieved = gflops / (t["biformer_tiny"].median_ms * 1e-3)
    speed = [dict(model="biformer_tiny", B=8, img=224, gflops_per_img=gflops / 8,
                  img_per_s=8 / (t["biformer_tiny"].median_ms * 1e-3), gemm_gflops=gemm,
                  pct_of_gemm=100 * achieved / gemm)]
    memory = []
    for h, w in ((224, 224), (512, 384)):
        peaks = {b: harness.peak_extra_mib("benchmarks.bench_routing:train_step", dict(height=h, width=w, backend=b))
                 for b in ("cpu", "reference")}
        memory.append(dict(model="biformer_tiny", B=2, img=f"{h}x{w}", mode="train step",
                           vz_cpu_peak_mib=peaks["cpu"], gather_peak_mib=peaks["reference"],
                           ratio=peaks["cpu"] / peaks["reference"]))
    return speed, memory


def targets(rows: list[dict], memory: list[dict]) -> list[dict]:
    def get(stage, topk, mode, variant="vz_cpu"):
        return next((r for r in rows if (r["stage"], r["B"], r["topk"], r["mode"], r["variant"]) ==
                     (stage, 8, topk, mode, variant)), None)
    out = []
    for stage, (_, _, _, topks) in STAGES.items():
        for topk in topks:
            f, b = get(stage, topk, "fwd"), get(stage, topk, "fwd+bwd")
            if f is None:
                continue
            bound = 0.25 if stage == "stage1" else 1.5
            out.append(dict(check="t/dense", stage=stage, topk=topk, value=f["t_over_dense"], target=f"≤ {bound}",
                            met="yes" if f["t_over_dense"] <= bound else "NO"))
            if stage == "stage1" and f.get("peak_over_out") is not None:
                out.append(dict(check="peak/out", stage=stage, topk=topk, value=f["peak_over_out"], target="≤ 16",
                                met="yes" if f["peak_over_out"] <= 16 else "NO"))
            if b is not None:
                ratio = b["median_ms"] / f["median_ms"]
                out.append(dict(check="fwd+bwd/fwd", stage=stage, topk=topk, value=ratio, target="≤ 3",
                                met="yes" if ratio <= 3 else "NO"))
    for m in memory:
        if m["img"] == "512x384":
            out.append(dict(check="train peak / gather's", stage="biformer_tiny", topk="-", value=m["ratio"],
                            target="≤ 0.5", met="yes" if m["ratio"] <= 0.5 else "NO"))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="batch 8 only, 5 rounds, memory of vz_cpu and dense only")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--no-model", action="store_true")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rounds = args.rounds or (5 if args.quick else 9)
    batches = (8,) if args.quick else (1, 8)
    memory = ("vz_cpu", "dense_sdpa") if args.quick else VARIANTS
    for name in set(STAGES) - set(args.stages.split(",")):
        del STAGES[name]
    rows = bench_op(batches, ("fwd", "fwd+bwd"), rounds, memory=memory)
    speed, mem = ([], []) if args.no_model else bench_model(rounds)
    cols = ["stage", "B", "topk", "mode", "variant", "median_ms", "t_over_dense", "x_official", "peak_extra_mib",
            "peak_over_out", "max_diff_vs_official", "gemm_gflops", "quiet"]
    print(harness.markdown_table(rows, cols))
    checks = targets(rows, mem)
    for table in (checks, speed, mem):
        if table:
            print()
            print(harness.markdown_table(table, list(table[0])))
    path = harness.write_json("routing", dict(machine=harness.machine_info(), rounds=rounds, rows=rows,
                                              targets=checks, models=speed, memory=mem))
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
