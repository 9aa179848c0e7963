"""A batch of 0 through every op on every backend (``triton`` through the interpreter on CPU tensors):
correctly shaped empty outputs, and empty gradients for every input and zero gradients for every
parameter in the backward. (The backends' fast paths tile or launch over the batch; the dispatch point
hands empty inputs to the reference, see ``visionzoo.ops._backend``.)"""

from __future__ import annotations

import pytest

from visionzoo.ops import triton_unavailable, use_backend

from ._export_cases import CASES

#: the op cases (the partition helpers have no backends)
OPS = [c for c in CASES if c.name != "partition"]


def _backends():
    out = ["reference", "cpu"]
    if triton_unavailable() is None:
        out.append("triton")
    return out


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("case", OPS, ids=[c.name for c in OPS])
def test_batch_of_zero_forward_backward(case, backend):
    model = case.make()
    _, h, w = case.shapes[0]
    full = case.inputs(2, h, w)
    empty = tuple(t[:0].clone().requires_grad_(True) for t in full)
    want_shape = model(*full).shape
    with use_backend(backend):
        out = model(*empty)
        assert out.shape == (0, *want_shape[1:])
        out.sum().backward()
    for t in empty:
        assert t.grad is not None and t.grad.shape == t.shape
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert not p.grad.any(), name  # no sample, no gradient
