"""``make gpu-check``'s script (benchmarks/gpu_check.py): its smoke mode on the Triton interpreter, its
coverage of every Triton op, and that its correctness check fails on a wrong kernel."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="gpu-check checks Triton kernels; Triton is not importable")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_cases  # noqa: E402
import gpu_check  # noqa: E402


def test_every_triton_op_has_a_gpu_check_entry():
    import visionzoo.ops  # noqa: F401  (registers every op)
    from visionzoo.ops import _backend

    triton_ops = {op for op, entry in _backend._OPS.items() if "triton" in entry.impls}
    assert triton_ops, "no Triton op registered"
    assert triton_ops <= set(gpu_cases.OPS), f"add {sorted(triton_ops - set(gpu_cases.OPS))} to gpu_cases.OPS"
    for op in triton_ops:
        assert any(c.small for c in gpu_cases.OPS[op]["cases"]), f"{op}: no interpreter-sized case"
        assert any(not c.small for c in gpu_cases.OPS[op]["cases"]), f"{op}: no model-scale case"
        assert gpu_cases.OPS[op]["speed"], f"{op}: no speed case"


def test_make_gpu_check_without_cuda_runs_the_interpreter_and_says_no_speed(tmp_path):
    """The README's ``make gpu-check``, its results folder redirected so the checkout stays clean."""
    if torch.cuda.is_available():
        pytest.skip("with CUDA `make gpu-check` is the full GPU run (minutes); run it on purpose")
    run = subprocess.run(["make", "gpu-check", f"GPU_CHECK_OUT={tmp_path}"], capture_output=True, text=True,
                         timeout=900, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = (tmp_path / "gpu_check_interpreter.md").read_text()
    import visionzoo.ops  # noqa: F401
    from visionzoo.ops import _backend
    for op in (op for op, entry in _backend._OPS.items() if "triton" in entry.impls):
        assert f"| {op} | PASS |" in report, report
    assert "no speed was measured" in report


def test_check_case_catches_a_wrong_kernel():
    """A 'triton' result off by 1 % must fail the check (the reference path is unchanged)."""
    case = gpu_cases.OPS["lka"]["cases"][0]
    fn, leaves = case.build(torch.device("cpu"), torch.float32, 1)

    def wrong(*t, backend=None):
        out = fn(*t, backend="reference" if backend == "triton" else backend)
        return out * 1.01 if backend == "triton" else out
    bad = gpu_cases.Case("wrong", lambda device, dtype, batch: (wrong, leaves))
    assert gpu_check.check_case(bad, torch.device("cpu"), torch.float32).startswith("out:")
    assert gpu_check.check_case(case, torch.device("cpu"), torch.float32) is None


def test_case_budget_interrupts():
    with pytest.raises(gpu_check.CaseTimeout):
        with gpu_check.budget(0.2):
            while True:
                pass
