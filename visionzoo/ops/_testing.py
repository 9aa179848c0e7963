"""Shared numerics for op tests: per-dtype tolerances in one place, comparison helpers and
NaN-filled kernel output buffers.

Imported by the tests (and usable by downstream kernel authors); never by model code.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["TOLERANCES", "assert_close", "assert_all_close", "nan_like", "nan_filled_outputs"]

#: (atol, rtol) for outputs and for gradients, per dtype
TOLERANCES = {
    torch.float64: {"out": (1e-10, 1e-8), "grad": (1e-9, 1e-7)},
    torch.float32: {"out": (1e-5, 1e-5), "grad": (1e-4, 1e-4)},
    torch.float16: {"out": (1e-2, 1e-2), "grad": (2e-2, 2e-2)},
    torch.bfloat16: {"out": (5e-2, 5e-2), "grad": (8e-2, 8e-2)},
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, kind: str = "out", what: str = "") -> None:
    """Compare with the tolerance of ``actual.dtype`` for ``kind`` ('out' or 'grad')."""
    atol, rtol = TOLERANCES[actual.dtype][kind]
    torch.testing.assert_close(actual, expected.to(actual.dtype), atol=atol, rtol=rtol,
                               msg=lambda m: f"{what} ({kind}, {actual.dtype}): {m}")


def nan_like(t: torch.Tensor) -> torch.Tensor:
    """A fresh buffer full of NaN, so that an element a kernel forgot to write fails the test."""
    return torch.full_like(t, float("nan"))


@contextlib.contextmanager
def nan_filled_outputs() -> Iterator[None]:
    """Inside the block every Triton kernel output buffer (``visionzoo.ops._triton._empty``) starts as
    NaN. Imports Triton: use it only where the triton backend runs."""
    from . import _triton
    old, _triton.NAN_FILL = _triton.NAN_FILL, True
    try:
        yield
    finally:
        _triton.NAN_FILL = old


def assert_all_close(got: dict, want: dict) -> None:
    """Compare named tensors (``out`` with the output tolerance, the rest as gradients), each on its
    own, and report every mismatch and every non-finite tensor, not just the first."""
    assert set(got) == set(want), (sorted(got), sorted(want))
    errors = []
    for name, actual in got.items():
        if not torch.isfinite(actual).all():
            errors.append(f"{name}: non-finite values (unwritten buffer or overflow)")
            continue
        try:
            assert_close(actual, want[name].to(actual.device), "out" if name == "out" else "grad", name)
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n\n".join(errors)
