"""Cost of refolding BatchNorm / layer scale into the fused eval path's weights on every call.

:mod:`visionzoo.blocks.fused_eval` folds on every forward (no cache can see ``p.data`` edits). This
times, round-robin in one process, the inference forward of the ``bench_timm_pairs`` models three
ways: ``refold`` (the library as shipped), ``cached`` (the earlier cache keyed by storage pointer and
``_version``, restored here by patching :func:`~visionzoo.blocks.fused_eval.folded`; it returned
stale weights after ``.data`` edits) and ``plain`` (fused path off: ATen modules, eval BatchNorm).
Columns: img/s, ``refold_cost_pct`` (cached img/s over refold img/s, minus 1: noisy on a busy host)
and ``fold_pct`` (time spent inside the folds of one forward, measured directly over 3 forwards, as a
share of the refold forward's median time: the steadier number).

    OMP_NUM_THREADS=1 python -m benchmarks.bench_fold_cache --threads 1
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from unittest import mock

import torch

import visionzoo
from visionzoo.blocks import fused_eval

from . import harness
from .bench_timm_pairs import PAIRS


def _cached_folded(owner, name, sources, make):
    key = tuple((t.data_ptr(), t._version, t.dtype) for t in sources)
    hit = owner.__dict__.get(name)
    if hit is None or hit[0] != key:
        hit = owner.__dict__[name] = (key, make())
    return hit[1]


def _call(model: torch.nn.Module, x: torch.Tensor, mode: str):
    def run():
        patch = {"cached": mock.patch.object(fused_eval, "folded", _cached_folded),
                 "plain": mock.patch.object(fused_eval, "_AVAILABLE", False)}.get(mode, contextlib.nullcontext())
        with patch, torch.inference_mode():
            return model(x)
    return run


def _fold_ms(model: torch.nn.Module, x: torch.Tensor, reps: int = 3) -> float:
    """Milliseconds per forward spent computing folded weights (refold path)."""
    spent = [0.0]

    def timed(owner, name, sources, make):
        t0 = time.perf_counter()
        out = make()
        spent[0] += time.perf_counter() - t0
        return out
    with mock.patch.object(fused_eval, "folded", timed), torch.inference_mode():
        for _ in range(reps):
            model(x)
    return 1e3 * spent[0] / reps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for pair in PAIRS:
        model = visionzoo.create_model(pair.ours).eval()
        x = torch.randn(args.batch, 3, pair.img_size, pair.img_size)
        t = harness.time_variants({m: _call(model, x, m) for m in ("refold", "cached", "plain")}, rounds=args.rounds)
        ips = {k: args.batch / (v.median_ms * 1e-3) for k, v in t.items() if k != "gemm"}
        rows.append(dict(model=pair.ours, img=pair.img_size, B=args.batch, refold_img_s=ips["refold"],
                         cached_img_s=ips["cached"], plain_img_s=ips["plain"],
                         refold_cost_pct=100 * (ips["cached"] / ips["refold"] - 1),
                         fold_pct=100 * _fold_ms(model, x) / t["refold"].median_ms,
                         quiet=min(f"{v.quiet_rounds}/{v.rounds}" for v in t.values())))
        print(harness.markdown_table(rows[-1:], list(rows[-1])).splitlines()[-1], file=sys.stderr)
    print(harness.markdown_table(rows, list(rows[0])))
    path = harness.write_json("fold_cache", dict(machine=harness.machine_info(), threads=args.threads,
                                                 rounds=args.rounds, rows=rows))
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
