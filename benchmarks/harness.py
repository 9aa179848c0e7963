"""A small benchmark harness for a shared, noisy 2-core CPU (method: reference/performance.md).

* :func:`time_variants` times every variant of one case round-robin in the same process: each
  round runs every variant (rotating the order) and a fixed GEMM, the machine's yardstick. Rounds
  in which other processes used ``>= quiet_cores`` cores (``/proc/stat`` minus our own jiffies)
  are dropped when at least 3 quiet rounds remain; the median of the kept rounds and the min of
  all rounds are reported. Only ratios taken in one run are meaningful.
* :func:`peak_extra_mib` runs one call in a fresh subprocess and reports its peak resident memory
  above what was resident before the call (inputs built and one warm-up call done, so lazily
  built caches count as inputs), with glibc's mmap threshold pinned to 64 KiB so freed buffers go
  back to the OS and ``VmHWM`` reset through ``/proc/self/clear_refs``.
* :func:`model_call` / :func:`count_gflops` turn a model factory into a timed call, for whole-model
  rows (``img/s``, achieved GFLOP/s, % of the same-round GEMM).
* :func:`markdown_table` and :func:`write_json` report (JSON goes to ``benchmarks/results/``).

A variant for :func:`peak_extra_mib` is named by ``"module:function"`` plus JSON keyword
arguments; the function returns a zero-argument callable with its inputs already bound.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["Timing", "time_variants", "gemm_call", "peak_extra_mib", "op_call", "dense_sdpa", "model_call",
           "count_gflops", "op_bench_args",
           "markdown_table", "write_json", "machine_info"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
_HZ = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Timing:
    median_ms: float
    min_ms: float
    rounds: int
    quiet_rounds: int
    samples_ms: list[float]


def _busy_jiffies() -> int:
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    return sum(vals) - vals[3] - vals[4]  # minus idle and iowait


def _own_jiffies() -> int:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime of all our threads


def gemm_call(n: int = 2048) -> tuple[Callable[[], object], float]:
    """A fixed fp32 ``n^3`` torch.mm and its FLOP count: the yardstick timed in every round."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    return (lambda: torch.mm(a, b, out=out)), 2.0 * n ** 3


def time_variants(variants: dict[str, Callable[[], object]], rounds: int = 10, slot_s: float = 0.15,
                  warmup: int = 2, quiet_cores: float = 0.3, gemm_n: int = 2048) -> dict[str, Timing]:
    """Time each zero-argument callable round-robin; the key ``"gemm"`` holds the yardstick.

    Each variant runs ``reps`` calls per round, chosen so that one slot takes about ``slot_s``.
    """
    calls = dict(variants)
    gemm, _ = gemm_call(gemm_n)
    calls["gemm"] = gemm
    reps = {}
    for name, fn in calls.items():
        for _ in range(warmup):
            fn()
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, int(slot_s / max(time.perf_counter() - t0, 1e-6)))
    names = list(calls)
    samples: dict[str, list[float]] = {n: [] for n in names}
    others: list[float] = []
    for r in range(rounds):
        gc.collect()
        busy0, own0, t0 = _busy_jiffies(), _own_jiffies(), time.perf_counter()
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn, n = calls[name], reps[name]
            s = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - s) / n * 1e3)
        wall = time.perf_counter() - t0
        others.append(max(0.0, (_busy_jiffies() - busy0 - (_own_jiffies() - own0)) / _HZ / wall))
    quiet = [i for i, o in enumerate(others) if o < quiet_cores]
    keep = quiet if len(quiet) >= 3 else list(range(rounds))
    return {n: Timing(statistics.median(samples[n][i] for i in keep), min(samples[n]), rounds, len(quiet),
                      samples[n]) for n in names}


def gemm_gflops(timings: dict[str, Timing], gemm_n: int = 2048) -> float:
    return 2.0 * gemm_n ** 3 / (timings["gemm"].median_ms * 1e-3) / 1e9


# ----------------------------------------------------------------------------------- memory
def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _measure_here(factory: str, kwargs: dict, threads: int) -> dict:
    import ctypes

    ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: big frees go back to the OS
    torch.set_num_threads(threads)
    module, _, attr = factory.partition(":")
    fn = getattr(importlib.import_module(module), attr)(**kwargs)
    fn()  # warm-up: lazily built tables and caches count as inputs
    gc.collect()
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    fn()
    peak = _status_kib("VmHWM")
    return {"extra_mib": (peak - base) / 1024, "base_mib": base / 1024}


def peak_extra_mib(factory: str, kwargs: dict | None = None, threads: int | None = None,
                   timeout: float = 600) -> float:
    """Peak RSS of one call of ``factory(**kwargs)()`` above the RSS before it, in a fresh process."""
    threads = threads or torch.get_num_threads()
    cmd = [sys.executable, "-m", "benchmarks.harness", "--measure", factory, json.dumps(kwargs or {}), str(threads)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"memory subprocess failed for {factory} {kwargs}:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])["extra_mib"]


# ------------------------------------------------------------------------------------- op calls
def op_call(op: Callable[[], torch.Tensor], leaves: tuple[torch.Tensor, ...], mode: str) -> Callable[[], object]:
    """A zero-argument call of ``op`` (inputs already bound): ``fwd`` runs it in inference mode,
    ``fwd+bwd`` also back-propagates a fixed random output gradient into ``leaves`` (then cleared)."""
    if mode == "fwd":
        def call():
            with torch.inference_mode():
                return op()
        return call
    if mode != "fwd+bwd":
        raise ValueError(f"mode must be 'fwd' or 'fwd+bwd', got {mode!r}")
    with torch.no_grad():
        grad_out = torch.randn_like(op())

    def call_bwd():
        op().backward(grad_out)
        for t in leaves:
            t.grad = None
    return call_bwd


def dense_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Attention over every token of ``[B, H, W, heads, D]`` maps (the dense baseline of the op benchmarks)."""
    tok = [x.flatten(1, 2).transpose(1, 2) for x in (q, k, v)]  # [B, heads, HW, D] views
    return F.scaled_dot_product_attention(*tok, scale=scale).transpose(1, 2).unflatten(1, q.shape[1:3])


# ------------------------------------------------------------------------------- whole models
def model_call(factory: Callable[[], torch.nn.Module], batch: int = 8, img_size: int = 224,
               train: bool = False) -> Callable[[], object]:
    """A zero-argument call of a model built by ``factory``: ``eval()`` + inference mode, or one
    SGD step (forward, backward, momentum update) when ``train``."""
    model = factory()
    x = torch.randn(batch, 3, img_size, img_size)
    if not train:
        model.eval()

        def run():
            with torch.inference_mode():
                return model(x)
        return run
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x).float().mean().backward()
        opt.step()
    return step


def count_gflops(fn: Callable[[], object]) -> float:
    """GFLOPs of one call (2 per MAC); SDPA is forced onto its math path and oneDNN is disabled (so
    visionzoo's fused inference ops, which the counter does not see, give way to the plain modules)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), torch.backends.mkldnn.flags(enabled=False), counter:
        fn()
    return counter.get_total_flops() / 1e9


# ---------------------------------------------------------------------------------- reporting
def op_bench_args(description: str, argv=None, quick_help: str = "5 rounds") -> argparse.Namespace:
    """The op benchmarks' command line (``--quick``, ``--rounds``, ``--no-memory``, ``--threads``), parsed, with
    ``rounds`` resolved (``--rounds``, else 5 with ``--quick``, else 9) and the torch thread count applied."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default torch's); on a shared 2-core host 1 thread gives steadier ratios")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.rounds = args.rounds or (5 if args.quick else 9)
    return args


def machine_info() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "nproc": os.cpu_count(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return "-" if v is None else str(v)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)
    return path


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--measure":
    print(json.dumps(_measure_here(sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]))))
