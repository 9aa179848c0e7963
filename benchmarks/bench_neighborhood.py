"""Neighborhood attention on CPU at DiNAT-tiny shapes: visionzoo ``cpu`` vs natten vs dense SDPA.

    python -m benchmarks.bench_neighborhood            # full run (~15 min on 2 cores)
    python -m benchmarks.bench_neighborhood --quick    # batch 8 only, fewer rounds

Variants, all on ``[B, H, W, heads, 32]`` inputs (natten's layout), kernel 7:

* ``vz_cpu``: ``visionzoo.ops.neighborhood.na2d(backend="cpu")``;
* ``natten``: ``natten.na2d`` (0.21.x has no CPU kernel: eager Flex Attention, forward only,
  since FlexAttention has no CPU backward);
* ``dense_sdpa``: ``F.scaled_dot_product_attention`` over all ``H*W`` tokens, no mask: the
  reference every ratio is taken against (``t/dense`` < 1 is faster than no sparsity at all);
* ``reference``: visionzoo's naive oracle.

Modes: ``fwd`` (inference mode) and ``fwd+bwd`` (gradients of q, k, v). Timings are same-run,
round-robin (see :mod:`benchmarks.harness`); peak extra memory is measured per call in a fresh
subprocess. Results: a markdown table on stdout and ``benchmarks/results/neighborhood.json``.

Whole-model rows (the hook for ``dinat_tiny``): :data:`MODELS` lists ``(name, factory)`` pairs
("module:function" returning an ``nn.Module``), and ``--model name=module:function`` adds one
from the command line; each is timed at batch 8, 224^2, against the GEMM of the same rounds.
"""
from __future__ import annotations

import argparse
import importlib
import sys

import torch

from benchmarks import harness

#: whole-model rows: (name, "module:function" building the model)
MODELS: list[tuple[str, str]] = [("dinat_tiny", "benchmarks.bench_neighborhood:dinat_tiny")]


def dinat_tiny() -> torch.nn.Module:
    import visionzoo
    return visionzoo.create_model("dinat_tiny")

STAGES = {  # name: (H = W, heads, head dim, dilations)
    "stage1": (56, 2, 32, (1, 8)),
    "stage3": (14, 8, 32, (1, 2)),
}
KERNEL = 7
VARIANTS = ("vz_cpu", "natten", "dense_sdpa", "reference")


def make_call(stage: str, batch: int, dilation: int, variant: str, mode: str):
    """Zero-argument call of one variant with its inputs bound (also used by the memory subprocess)."""
    side, heads, dim, _ = STAGES[stage]
    grad = mode == "fwd+bwd"
    q, k, v = (torch.randn(batch, side, side, heads, dim, requires_grad=grad) for _ in range(3))
    if variant == "vz_cpu" or variant == "reference":
        from visionzoo.ops.neighborhood import na2d
        op = lambda: na2d(q, k, v, KERNEL, dilation, backend="cpu" if variant == "vz_cpu" else "reference")  # noqa: E731
    elif variant == "natten":
        import natten
        op = lambda: natten.na2d(q, k, v, KERNEL, dilation=dilation)  # noqa: E731
    elif variant == "dense_sdpa":
        op = lambda: harness.dense_sdpa(q, k, v)  # noqa: E731
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return harness.op_call(op, (q, k, v), mode)


def _natten_unavailable() -> str | None:
    """Why natten cannot be imported, or ``None`` if it can."""
    try:
        importlib.import_module("natten")
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return f"{type(e).__name__}: {e}"
    return None


def _max_diff_vs_natten(stage: str, batch: int, dilation: int) -> float | None:
    if _natten_unavailable():
        return None
    import natten
    from visionzoo.ops.neighborhood import na2d
    side, heads, dim, _ = STAGES[stage]
    q, k, v = (torch.randn(batch, side, side, heads, dim) for _ in range(3))
    with torch.inference_mode():
        return (na2d(q, k, v, KERNEL, dilation, backend="cpu") - natten.na2d(q, k, v, KERNEL, dilation=dilation)
                ).abs().max().item()


def bench_na(batches, modes, rounds: int, memory=VARIANTS, variants=VARIANTS) -> list[dict]:
    """One row per (stage, batch, dilation, mode, variant); ``memory``: variants whose peak is measured."""
    rows = []
    why = _natten_unavailable()
    if why:
        print(f"natten unavailable ({why}); skipping it", file=sys.stderr)
        variants = tuple(v for v in variants if v != "natten")
    for stage, (side, heads, dim, dilations) in STAGES.items():
        for batch in batches:
            for dilation in dilations:
                out_mib = batch * side * side * heads * dim * 4 / 2 ** 20
                diff = _max_diff_vs_natten(stage, batch, dilation)
                # every mode of one shape in the same rounds, so fwd+bwd / fwd is a same-run ratio;
                # natten 0.21 runs CPU through FlexAttention, which has no CPU backward
                keys = [f"{v}/{mode}" for mode in modes for v in variants if not (v == "natten" and mode == "fwd+bwd")]
                calls = {key: make_call(stage, batch, dilation, *key.split("/")) for key in keys}
                t = harness.time_variants(calls, rounds=rounds)
                gemm = harness.gemm_gflops(t)
                for key in keys:
                    v, mode = key.split("/")
                    dense, natten = t[f"dense_sdpa/{mode}"].median_ms, t.get(f"natten/{mode}")
                    row = dict(stage=stage, B=batch, dil=dilation, mode=mode, variant=v,
                               median_ms=t[key].median_ms, min_ms=t[key].min_ms,
                               t_over_dense=t[key].median_ms / dense,
                               x_natten=(natten.median_ms / t[key].median_ms) if natten else None,
                               quiet=f"{t[key].quiet_rounds}/{t[key].rounds}", gemm_gflops=gemm,
                               max_diff_vs_natten=diff if v == "vz_cpu" else None)
                    if v in memory:
                        extra = harness.peak_extra_mib("benchmarks.bench_neighborhood:make_call",
                                                       dict(stage=stage, batch=batch, dilation=dilation,
                                                            variant=v, mode=mode))
                        row.update(peak_extra_mib=extra, peak_over_out=extra / out_mib)
                    rows.append(row)
                    print(harness.markdown_table([row], list(row)).splitlines()[-1], file=sys.stderr)
    return rows


def bench_models(models, rounds: int, batch: int = 8, img_size: int = 224) -> list[dict]:
    """Whole-model forward rows, one per ``(name, "module:function")`` model factory: img/s,
    achieved GFLOP/s and its share of the GEMM timed in the same rounds (MODEL-1 in
    reference/performance.md). FLOPs are counted with the ``reference`` backend, whose
    neighborhood attention does the exact NA FLOPs (the fast paths pad tiles)."""
    from visionzoo.ops import use_backend

    rows = []
    for name, factory_path in models:
        module, _, attr = factory_path.partition(":")
        factory = getattr(importlib.import_module(module), attr)
        call = harness.model_call(factory, batch, img_size)
        with use_backend("reference"):
            gflops = harness.count_gflops(call)
        t = harness.time_variants({name: call}, rounds=rounds)
        gemm = harness.gemm_gflops(t)
        achieved = gflops / (t[name].median_ms * 1e-3)
        rows.append(dict(model=name, B=batch, img=img_size, gflops_per_img=gflops / batch,
                         img_per_s=batch / (t[name].median_ms * 1e-3), achieved_gflops=achieved,
                         gemm_gflops=gemm, pct_of_gemm=100 * achieved / gemm))
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """The brief's targets for ``vz_cpu`` at batch 8, checked against this run."""
    def get(stage, dil, mode, variant="vz_cpu"):
        for r in rows:
            if (r["stage"], r["B"], r["dil"], r["mode"], r["variant"]) == (stage, 8, dil, mode, variant):
                return r
        return None
    out = []
    checks = [("t/dense", "stage1", 1, 0.25), ("t/dense", "stage1", 8, 0.10), ("x natten", "stage1", 1, 50),
              ("x natten", "stage1", 8, 50), ("t/dense", "stage3", 1, 1.2), ("t/dense", "stage3", 2, 1.2),
              ("peak/out", "stage1", 1, 16), ("peak/out", "stage1", 8, 16), ("fwd+bwd/fwd", "stage1", 1, 3),
              ("fwd+bwd/fwd", "stage1", 8, 3), ("fwd+bwd/fwd", "stage3", 1, 3), ("fwd+bwd/fwd", "stage3", 2, 3)]
    for what, stage, dil, target in checks:
        r, value, dense_value = get(stage, dil, "fwd"), None, None
        if r is None:
            continue
        if what == "t/dense":
            value = r["t_over_dense"]
        elif what == "x natten":
            value = r["x_natten"]
        elif what == "peak/out":
            value = r.get("peak_over_out")
        else:
            rb = get(stage, dil, "fwd+bwd")
            value = rb["median_ms"] / r["median_ms"] if rb else None
            df, db = get(stage, dil, "fwd", "dense_sdpa"), get(stage, dil, "fwd+bwd", "dense_sdpa")
            dense_value = db["median_ms"] / df["median_ms"] if df and db else None
        if value is None:
            continue
        ok = value >= target if what == "x natten" else value <= target
        bound = ("≥ " if what == "x natten" else "≤ ") + str(target)
        out.append(dict(check=what, stage=stage, dil=dil, B=8, value=value, target=bound, met="yes" if ok else "NO",
                        dense_sdpa_same_ratio=dense_value))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="batch 8 only, 5 rounds, memory of vz_cpu and dense only")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--modes", default="fwd,fwd+bwd")
    p.add_argument("--model", action="append", default=[], metavar="NAME=MODULE:FUNCTION",
                   help="add a whole-model row, e.g. dinat_tiny=visionzoo.models.nat:dinat_tiny")
    p.add_argument("--models-only", action="store_true", help="skip the op rows")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rounds = args.rounds or (5 if args.quick else 9)
    batches = (8,) if args.quick else (1, 8)
    memory = () if args.no_memory else ("vz_cpu", "dense_sdpa") if args.quick else VARIANTS
    rows = [] if args.models_only else bench_na(batches, args.modes.split(","), rounds, memory=memory)
    model_rows = bench_models(MODELS + [tuple(m.split("=", 1)) for m in args.model], rounds)
    cols = ["stage", "B", "dil", "mode", "variant", "median_ms", "min_ms", "t_over_dense", "x_natten",
            "peak_extra_mib", "peak_over_out", "max_diff_vs_natten", "gemm_gflops", "quiet"]
    if rows:
        print(harness.markdown_table(rows, cols))
    checks = targets(rows)
    if checks:
        print()
        print(harness.markdown_table(checks, list(checks[0])))
    if model_rows:
        print()
        print(harness.markdown_table(model_rows, list(model_rows[0])))
    payload = dict(machine=harness.machine_info(), rounds=rounds, rows=rows, targets=checks, models=model_rows)
    path = harness.write_json("neighborhood_models" if args.models_only else "neighborhood", payload)
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
