"""The dispatch point: explicit argument > innermost ``use_backend`` > ``VISIONZOO_BACKEND`` > auto."""
from __future__ import annotations

import threading

import pytest
import torch

from visionzoo.ops import _backend
from visionzoo.ops._backend import BackendUnavailable, resolve, use_backend
from visionzoo.ops.neighborhood import na2d

OP = "_vz_test_op"
IMPLS = {"reference": "math:floor", "cpu": "math:ceil", "triton": "math:trunc"}


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    """A private op registered for each test and removed after; no backend forced from outside."""
    monkeypatch.delenv("VISIONZOO_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "_OPS", dict(_backend._OPS))
    _backend.register_op(OP, IMPLS)


def _picked(*tensors, **kwargs) -> str:
    return resolve(OP, *(tensors or (torch.zeros(1),)), **kwargs)[1]


def test_auto_picks_cpu_for_cpu_tensors():
    fn, name = resolve(OP, torch.zeros(2))
    assert name == "cpu" and fn.__name__ == "ceil"
    assert resolve("na2d", *(torch.zeros(1, 4, 4, 1, 2),) * 3)[1] == "cpu"


def test_auto_without_tensors_or_on_other_devices_is_reference():
    assert resolve(OP)[1] == "reference"
    assert _picked(torch.zeros(1, device="meta")) == "reference"


def test_environment_beats_auto(monkeypatch):
    monkeypatch.setenv("VISIONZOO_BACKEND", " Reference ")
    assert _picked() == "reference"
    monkeypatch.setenv("VISIONZOO_BACKEND", "auto")
    assert _picked() == "cpu"


def test_context_beats_environment(monkeypatch):
    monkeypatch.setenv("VISIONZOO_BACKEND", "reference")
    with use_backend("cpu"):
        assert _picked() == "cpu"
    with use_backend("auto"):  # an explicit 'auto' context also overrides the environment
        assert _picked() == "cpu"
    assert _picked() == "reference"


def test_explicit_argument_beats_context_and_environment(monkeypatch):
    monkeypatch.setenv("VISIONZOO_BACKEND", "cpu")
    with use_backend("cpu"):
        assert _picked(backend="reference") == "reference"
        assert _picked(backend="auto") == "cpu"


def test_nested_contexts_restore():
    assert _backend.current_backend() is None
    with use_backend("reference"):
        assert _picked() == "reference"
        with use_backend("cpu"):
            assert _picked() == "cpu"
            with use_backend("auto"):
                assert _backend.current_backend() is None
            assert _backend.current_backend() == "cpu"
        assert _picked() == "reference"
    assert _backend.current_backend() is None


def test_context_restores_after_exception():
    with pytest.raises(RuntimeError, match="boom"):
        with use_backend("reference"):
            raise RuntimeError("boom")
    assert _backend.current_backend() is None


def test_context_is_per_thread():
    seen = []
    with use_backend("reference"):
        t = threading.Thread(target=lambda: seen.append(_picked()))
        t.start()
        t.join()
    assert seen == ["cpu"]


def test_explicit_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailable, match=r"backend 'triton' cannot run this call: .*"
                                                 r"(CUDA tensors|triton cannot be imported)"):
        resolve(OP, torch.zeros(1), backend="triton")
    assert _picked() == "cpu"  # auto is unaffected


def test_explicit_backend_failing_its_check_raises_and_auto_falls_back(monkeypatch):
    _backend.register_op(OP, IMPLS, checks={"cpu": lambda *t, **g: "no odd sizes" if t[0].numel() % 2 else None})
    with pytest.raises(BackendUnavailable, match="no odd sizes"):
        resolve(OP, torch.zeros(3), backend="cpu")
    assert _picked(torch.zeros(3)) == "reference"
    assert _picked(torch.zeros(2)) == "cpu"
    assert _backend.can_run(OP, "cpu", torch.zeros(3)) == "no odd sizes"


def test_cpu_backend_refuses_other_devices():
    why = _backend.can_run(OP, "cpu", torch.zeros(1, device="meta"))
    assert why and "CPU tensors" in why
    with pytest.raises(BackendUnavailable, match="CPU tensors"):
        resolve(OP, torch.zeros(1, device="meta"), backend="cpu")


def test_implementation_that_cannot_be_imported():
    _backend.register_op(OP, dict(IMPLS, cpu="visionzoo._no_such_module:fn"))
    with pytest.raises(BackendUnavailable, match=r"'cpu' cannot be loaded from 'visionzoo._no_such_module:fn'"):
        resolve(OP, torch.zeros(1), backend="cpu")
    assert _picked() == "reference"  # auto never raises for an optional backend


def test_missing_implementation_is_a_reason():
    _backend.register_op(OP, {"reference": "math:floor"})
    assert "has no 'cpu' implementation" in _backend.can_run(OP, "cpu", torch.zeros(1))
    with pytest.raises(BackendUnavailable, match="has no 'cpu' implementation"):
        resolve(OP, torch.zeros(1), backend="cpu")
    assert _picked() == "reference"


@pytest.mark.parametrize("where", ["argument", "context", "environment"])
def test_unknown_backend_names_raise(where, monkeypatch):
    with pytest.raises(ValueError, match=r"unknown backend 'cuda_fast'"):
        if where == "argument":
            resolve(OP, torch.zeros(1), backend="cuda_fast")
        elif where == "context":
            with use_backend("cuda_fast"):
                pass
        else:
            monkeypatch.setenv("VISIONZOO_BACKEND", "cuda_fast")
            resolve(OP, torch.zeros(1))
    if where == "environment":
        with pytest.raises(ValueError, match="VISIONZOO_BACKEND"):
            resolve(OP, torch.zeros(1))


def test_registration_errors():
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        _backend.register_op("x", {"reference": "math:floor", "gpu": "math:ceil"})
    with pytest.raises(ValueError, match="needs a 'reference' implementation"):
        _backend.register_op("x", {"cpu": "math:ceil"})
    with pytest.raises(KeyError, match="unknown op 'nope'"):
        resolve("nope", torch.zeros(1))
    with pytest.raises(KeyError, match="unknown op 'nope'"):
        _backend.can_run("nope", "cpu")


def test_switching_backend_keeps_results():
    q, k, v = (torch.randn(1, 6, 5, 2, 4) for _ in range(3))
    with use_backend("reference"):
        ref = na2d(q, k, v, 3)
    torch.testing.assert_close(na2d(q, k, v, 3), ref)
    torch.testing.assert_close(na2d(q, k, v, 3, backend="cpu"), ref)
