"""``make gpu-check``: prove and time every Triton kernel on a CUDA device, in minutes, with nothing to prepare.

On a CUDA machine:

1. **correctness**: every Triton op (:data:`gpu_cases.OPS`), forward and backward, in fp32 / fp16 /
   bf16, against its ``reference`` backend run in float64 on the same (dtype-rounded) inputs, with
   the tests' per-dtype tolerances (:data:`visionzoo.ops._testing.TOLERANCES`), on the interpreter
   tests' awkward shapes and on model-scale stage shapes; one verdict line per op;
2. **speed**: each op's speed cases against dense ``scaled_dot_product_attention`` and the plain
   formulation (the ``reference`` backend), forward and fwd+bwd, batch 1 and 32, fp16 and bf16,
   CUDA-event timing (``triton.testing.do_bench``: warm-up, median); peak memory of each fwd+bwd;
3. **models**: img/s of one model per family against a timm model of similar FLOPs
   (:data:`gpu_cases.MODEL_PAIRS`), fp16 autocast, eager and ``torch.compile``.

Without CUDA (or with ``--smoke``) it runs the correctness part on the Triton interpreter
(``TRITON_INTERPRET=1``, CPU tensors) at the small shapes only, and says that no speed was measured.

Every case runs under a time budget (``--case-budget-s``; a SIGALRM interrupts Python, not a running
GPU kernel) and the whole run under ``--budget-s``: a failing or timed-out case prints its error and
the run goes on. Exit status 1 if any correctness check failed (timeouts of speed rows do not count).
Output: a markdown table on stdout and ``benchmarks/results/gpu_check.{json,md}`` (``--out``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]


class CaseTimeout(Exception):
    pass


@contextlib.contextmanager
def budget(seconds: float):
    """Raise :class:`CaseTimeout` in the main thread after ``seconds`` (no-op where SIGALRM is missing)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        raise CaseTimeout(f"over its {seconds:.0f} s budget")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _grads(fn, leaves, backend, grad_out=None):
    """Output and the gradients of ``leaves`` for a fixed random output gradient."""
    leaves = [t.detach().requires_grad_() for t in leaves]
    out = fn(*leaves, backend=backend)
    if grad_out is None:
        gen = torch.Generator().manual_seed(1)
        grad_out = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype), allow_unused=True)
    return out.detach(), [g for g in grads], grad_out


def check_case(case, device, dtype) -> str | None:
    """``None`` if the Triton op matches the float64 reference for output and every gradient, else why."""
    from visionzoo.ops._testing import TOLERANCES, nan_filled_outputs

    fn, leaves = case.build(device, dtype, 1)
    with nan_filled_outputs():
        out, grads, grad_out = _grads(fn, leaves, "triton")
    ref_out, ref_grads, _ = _grads(fn, [t.double() for t in leaves], "reference", grad_out.double())
    problems = []
    for name, got, want in [("out", out, ref_out)] + [(f"grad[{i}]", g, r) for i, (g, r) in
                                                     enumerate(zip(grads, ref_grads))]:
        if got is None or want is None:
            if (got is None) != (want is None):
                problems.append(f"{name}: present on one backend only")
            continue
        atol, rtol = TOLERANCES[dtype]["out" if name == "out" else "grad"]
        got, want = got.double(), want.to(got.device)
        if name != "out" and int(name[5:-1]) in case.params:
            # a parameter's gradient sums over every token: its rounding error scales with the largest entry
            atol = atol * max(1.0, float(want.abs().max()))
        if not torch.isfinite(got).all():
            problems.append(f"{name}: non-finite values")
            continue
        err = (got - want).abs() - rtol * want.abs()
        if err.max() > atol:
            problems.append(f"{name}: max |diff| {float((got - want).abs().max()):.3g} over atol {atol} + rtol {rtol}")
    return "; ".join(problems) or None


def run_correctness(ops: dict, device, dtypes, small_only: bool, case_budget: float, deadline: float, log) -> list:
    rows = []
    for op, entry in ops.items():
        fails = timeouts = passed = 0
        for case in entry["cases"]:
            if small_only and not case.small:
                continue
            for dtype in dtypes:
                label = f"{op} | {case.label} | {str(dtype)[6:]}"
                if time.monotonic() > deadline:
                    rows.append(dict(op=op, case=case.label, dtype=str(dtype)[6:], status="skipped (run budget)"))
                    continue
                t0 = time.monotonic()
                try:
                    with budget(case_budget):
                        why = check_case(case, device, dtype)
                    status = "ok" if why is None else f"FAIL: {why}"
                except CaseTimeout as e:
                    status, why = f"timeout: {e}", None
                    timeouts += 1
                except Exception as e:  # a crash is a failed check; the run goes on
                    why = f"{type(e).__name__}: {e}"
                    status = f"FAIL: {why}"
                    log(traceback.format_exc(limit=3))
                fails += status.startswith("FAIL")
                passed += status == "ok"
                rows.append(dict(op=op, case=case.label, dtype=str(dtype)[6:], status=status,
                                 seconds=round(time.monotonic() - t0, 2)))
                log(f"  {label}: {status} ({time.monotonic() - t0:.1f} s)")
        verdict = "PASS" if fails == 0 and timeouts == 0 and passed else ("FAIL" if fails else "INCOMPLETE")
        log(f"{op}: {verdict} ({passed} ok, {fails} failed, {timeouts} timed out)")
        rows.append(dict(op=op, verdict=verdict, passed=passed, failed=fails, timeouts=timeouts))
    return rows


def _bench(call, leaves, mode: str) -> tuple[float, float]:
    """Median ms (CUDA events) and peak MiB allocated of one call in ``mode`` ('fwd' | 'fwd+bwd')."""
    from triton.testing import do_bench

    if mode == "fwd":
        leaves = [t.detach() for t in leaves]

        def run():
            with torch.inference_mode():
                call(*leaves)
    else:
        leaves = [t.detach().requires_grad_() for t in leaves]
        grad_out = torch.randn_like(call(*leaves))

        def run():
            out = call(*leaves)
            torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    run()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    return do_bench(run, warmup=10, rep=50, return_mode="median"), peak


def run_speed(ops: dict, device, case_budget: float, deadline: float, log) -> list:
    rows = []
    for op, entry in ops.items():
        for case in entry["speed"]:
            for dtype in (torch.float16, torch.bfloat16):
                for batch in (1, 32):
                    if time.monotonic() > deadline:
                        log(f"  {op} {case.label}: skipped (run budget)")
                        continue
                    try:
                        with budget(case_budget):
                            variants = case.build(device, dtype, batch)
                            for mode in ("fwd", "fwd+bwd"):
                                row = dict(op=op, case=case.label, dtype=str(dtype)[6:], batch=batch, mode=mode)
                                for name, (call, leaves) in variants.items():
                                    try:
                                        row[name], row[f"{name} MiB"] = _bench(call, leaves, mode)
                                    except torch.cuda.OutOfMemoryError:
                                        row[name] = "OOM"
                                        torch.cuda.empty_cache()
                                rows.append(row)
                                log("  " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                                     for k, v in row.items()))
                    except Exception as e:  # speed rows never fail the run; they say what happened
                        rows.append(dict(op=op, case=case.label, dtype=str(dtype)[6:], batch=batch,
                                         error=f"{type(e).__name__}: {e}"))
                        log(f"  {op} {case.label} {dtype} b{batch}: {type(e).__name__}: {e}")
                    finally:
                        torch.cuda.empty_cache()
    return rows


def run_models(pairs, device, case_budget: float, deadline: float, compile_: bool, log, batch: int = 32) -> list:
    import timm
    from triton.testing import do_bench

    import visionzoo

    rows = []
    for ours, theirs in pairs:
        for name, make in ((ours, visionzoo.create_model), (theirs, timm.create_model)):
            for compiled in ((False, True) if compile_ else (False,)):
                if time.monotonic() > deadline:
                    log(f"  {name}: skipped (run budget)")
                    continue
                row = dict(model=name, pair=ours, compiled=compiled, batch=batch)
                try:
                    with budget(case_budget):
                        model = make(name).to(device).eval()
                        fwd = torch.compile(model) if compiled else model
                        x = torch.randn(batch, 3, 224, 224, device=device)

                        def run():
                            with torch.inference_mode(), torch.autocast("cuda", torch.float16):
                                fwd(x)
                        run()
                        row["img/s"] = batch / do_bench(run, warmup=5, rep=30, return_mode="median") * 1e3
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                rows.append(row)
                log(f"  {row}")
                torch.cuda.empty_cache()
    return rows


def environment(cuda: bool) -> dict:
    import triton

    env = dict(python=platform.python_version(), torch=torch.__version__, triton=triton.__version__,
               host=platform.node())
    if cuda:
        env.update(gpu=torch.cuda.get_device_name(), capability=".".join(map(str, torch.cuda.get_device_capability())),
                   driver=_driver(), cuda=torch.version.cuda)
    else:
        env.update(gpu="none (Triton interpreter on CPU tensors)")
    return env


def _driver() -> str:
    try:
        import subprocess
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def markdown(env: dict, correctness: list, speed: list, models: list, cuda: bool) -> str:
    lines = ["# gpu-check", "", "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), "",
             "## Correctness (Triton vs float64 reference, output and every gradient)", "",
             "| op | verdict | ok | failed | timed out |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['op']} | {r['verdict']} | {r['passed']} | {r['failed']} | {r['timeouts']} |"
              for r in correctness if "verdict" in r]
    bad = [r for r in correctness if "status" in r and r["status"] != "ok"]
    if bad:
        lines += ["", "Failing or unfinished cases:", ""] + [f"- {r['op']} / {r['case']} / {r['dtype']}: "
                                                             f"{r['status']}" for r in bad]
    if not cuda:
        lines += ["", "**No CUDA device: no speed was measured.** The kernels ran on the Triton interpreter "
                  "(CPU tensors) at the small shapes only."]
        return "\n".join(lines) + "\n"
    lines += ["", "## Ops (median ms, CUDA events; ratio = alternative / triton, > 1: triton faster)", "",
              "| op | case | dtype | batch | mode | triton ms | alternatives ms (ratio) | triton MiB | alt MiB |",
              "|---|---|---|---:|---|---:|---|---:|---|"]
    for r in speed:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['case']} | {r['dtype']} | {r['batch']} | - | error | {r['error'][:80]} "
                         "| | |")
            continue
        alts = [k for k in r if k not in ("op", "case", "dtype", "batch", "mode", "triton") and not k.endswith("MiB")]
        tri = r.get("triton")

        def ratio(v):
            return f"{v:.3f} ({v / tri:.2f}x)" if isinstance(v, float) and isinstance(tri, float) else str(v)
        lines.append(f"| {r['op']} | {r['case']} | {r['dtype']} | {r['batch']} | {r['mode']} | "
                     f"{tri if not isinstance(tri, float) else f'{tri:.3f}'} | "
                     + "; ".join(f"{a}: {ratio(r[a])}" for a in alts) + " | "
                     f"{r.get('triton MiB', float('nan')):.0f} | "
                     + "; ".join(f"{a}: {r.get(a + ' MiB', float('nan')):.0f}" for a in alts) + " |")
    lines += ["", "## Models (fp16 autocast, batch 32, 224x224, img/s)", "",
              "| model | compiled | img/s | note |", "|---|---|---:|---|"]
    for r in models:
        ips = r.get("img/s")
        lines.append(f"| {r['model']} | {r['compiled']} | {f'{ips:.0f}' if ips else '-'} | {r.get('error', '')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="interpreter-sized correctness only (also without CUDA)")
    ap.add_argument("--only", default="", help="comma-separated op names (default: every Triton op)")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--no-models", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="whole models in eager mode only")
    ap.add_argument("--budget-s", type=float, default=420.0, help="whole-run budget (seconds)")
    ap.add_argument("--case-budget-s", type=float, default=60.0, help="budget of one case (seconds)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for gpu_check.{json,md}")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
    from visionzoo.ops import _backend

    import gpu_cases

    def log(msg):
        print(msg, flush=True)

    start = time.monotonic()
    deadline = start + args.budget_s
    triton_ops = sorted(op for op, e in _backend._OPS.items() if "triton" in e.impls)
    missing = [op for op in triton_ops if op not in gpu_cases.OPS]
    if missing:
        log(f"ERROR: Triton ops without a gpu-check entry in benchmarks/gpu_cases.py: {missing}")
        return 1
    only = [o for o in args.only.split(",") if o]
    unknown = [o for o in only if o not in gpu_cases.OPS]
    if unknown:
        log(f"ERROR: --only: unknown ops {unknown}; known: {sorted(gpu_cases.OPS)}")
        return 2
    ops = {op: gpu_cases.OPS[op] for op in (only or sorted(gpu_cases.OPS)) if op in triton_ops}
    for op in set(only or gpu_cases.OPS) - set(ops):
        log(f"{op}: not a registered Triton op in this checkout (skipped)")
    smoke = args.smoke or not cuda
    device = torch.device("cuda" if cuda else "cpu")
    dtypes = (torch.float32,) if smoke else (torch.float32, torch.float16, torch.bfloat16)
    env = environment(cuda)
    log(f"gpu-check on {env['gpu']} (torch {env['torch']}, triton {env['triton']}); "
        f"{'smoke: interpreter-sized shapes' if smoke else 'full'}")
    if not cuda:
        log("No CUDA device: correctness on the Triton interpreter only; no speed will be measured.")

    # the run budget is shared out by phase, so a slow phase (Triton compilation) cannot starve the others
    do_speed, do_models = cuda and not (args.no_speed or smoke), cuda and not (args.no_models or smoke)
    share = 0.5 if do_speed or do_models else 1.0
    correctness = run_correctness(ops, device, dtypes, smoke, args.case_budget_s, start + share * args.budget_s, log)
    speed = run_speed(ops, device, args.case_budget_s, start + (0.8 if do_models else 1.0) * args.budget_s,
                      log) if do_speed else []
    models = []
    if do_models:
        models = run_models(gpu_cases.MODEL_PAIRS, device, args.case_budget_s * 2, deadline, not args.no_compile, log)
    wall = time.monotonic() - start

    report = markdown(env, correctness, speed, models, cuda) + f"\nWall: {wall:.0f} s\n"
    log("\n" + report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_check" if cuda else "gpu_check_interpreter"
    (out / f"{stem}.md").write_text(report)
    (out / f"{stem}.json").write_text(json.dumps(dict(env=env, smoke=smoke, wall_s=round(wall, 1),
                                                      correctness=correctness, speed=speed, models=models),
                                                 indent=1, default=str))
    failed = [r["op"] for r in correctness if r.get("verdict") == "FAIL"]
    if failed:
        log(f"gpu-check: correctness FAILED for {failed}")
        return 1
    log(f"gpu-check: correctness passed for every op checked ({wall:.0f} s)"
        + ("" if cuda else "; no speed measured (no CUDA)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
