"""Shared numerics for op tests: per-dtype tolerances in one place and a comparison helper.

Imported by the tests (and usable by downstream kernel authors); never by model code.
"""
from __future__ import annotations

import torch

__all__ = ["TOLERANCES", "assert_close", "nan_like"]

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
