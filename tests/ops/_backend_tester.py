"""One backend tester for every attention op (after NATTEN's ``NattenBackendTester``).

A :class:`BackendTester` holds one case of one op: a callable with the geometry bound and the
case's float64 inputs (awkward shapes chosen by the test). It computes the reference forward and
backward once (float64, on the ``reference`` backend) and then checks any backend in any dtype
against it, separately for the output and for each gradient, with the per-dtype tolerances of
:data:`visionzoo.ops._testing.TOLERANCES` (the one place they are kept). A failure names the
case, the backend, the dtype and every tensor that differs or is not finite. Triton runs with
NaN-filled output buffers (:func:`visionzoo.ops._testing.nan_filled_outputs`), so an element a
kernel forgets to write fails.

Low-precision runs (fp16 / bf16) round the inputs and the output gradient to that dtype first; the
reference for them is computed once per such dtype on the rounded values (in float64), so only the
backend's arithmetic is measured, never the input rounding.

How a new op's test uses it::

    from ._backend_tester import BackendTester

    CASES = [...]  # awkward shapes: odd, non-square, smaller than a window, Dv != D, ...

    @functools.lru_cache(maxsize=None)  # one tester, hence one reference, per case
    def tester(case):
        q, k, v = ...  # float64 tensors (None for an absent optional input)
        return BackendTester("my_op", lambda q, k, v, backend: my_op(q, k, v, 7, backend=backend),
                             [q, k, v], names=("dq", "dk", "dv"), label=str(case))

    @pytest.mark.parametrize("backend,dtype", [("cpu", torch.float32), ("triton", torch.float16)])
    @pytest.mark.parametrize("case", CASES, ids=str)
    def test_matches_reference(case, backend, dtype):
        tester(case).check(backend, dtype)  # skips with the reason where the backend cannot run

``op`` gets the inputs positionally and ``backend`` as a keyword; the first three inputs are
``q, k, v``; ``names`` name the gradients of the inputs in order (one per input, None inputs
included). The op name is the one registered with :func:`visionzoo.ops._backend.register_op`
(used to ask whether a backend can run here).
"""
from __future__ import annotations

from typing import Callable, Sequence

import pytest
import torch

from visionzoo.ops import _backend, _testing

__all__ = ["BackendTester", "device_for", "assert_compiles_like_eager"]

LOW_PRECISION = (torch.float16, torch.bfloat16)


def device_for(backend: str) -> str:
    """Where a backend's tensors live: Triton on CUDA when there is one (else interpreted on CPU)."""
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


class BackendTester:
    """One case of one op, checked on any backend and dtype against one float64 reference."""

    def __init__(self, op_name: str, op: Callable, inputs: Sequence[torch.Tensor | None], names: Sequence[str],
                 label: str = "", seed: int = 1):
        if len(names) != len(inputs):
            raise ValueError(f"names {tuple(names)} must name every input ({len(inputs)})")
        self.op_name, self.op, self.label = op_name, op, label
        self.inputs = [None if t is None else t.detach().to(torch.float64) for t in inputs]
        self.names = tuple(names)
        self.seed = seed
        self._references: dict = {}
        self._dout: torch.Tensor | None = None

    def _rounded(self, t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        return None if t is None or dtype not in LOW_PRECISION else t.to(dtype).to(torch.float64)

    def _run(self, backend: str, dtype: torch.dtype, inputs, dout) -> dict[str, torch.Tensor]:
        device = device_for(backend)
        leaves = [None if t is None else t.to(device=device, dtype=dtype).requires_grad_() for t in inputs]
        out = self.op(*leaves, backend=backend)
        if dout is None:  # the first (reference) run fixes the output gradient
            g = torch.Generator().manual_seed(self.seed)
            self._dout = dout = torch.randn(out.shape, generator=g, dtype=torch.float64)
        given = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(out, given, dout.to(device=device, dtype=dtype)))
        result = {"out": out.detach()}
        result.update({name: next(grads) for name, t in zip(self.names, leaves) if t is not None})
        return result

    def reference(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The float64 reference output and gradients for runs in ``dtype`` (cached: inputs are rounded
        to fp16 / bf16 first for those dtypes, so each of them has its own)."""
        key = dtype if dtype in LOW_PRECISION else None
        if key not in self._references:
            if None not in self._references and key is not None:
                self.reference(torch.float32)  # fixes the output gradient first
            inputs = self.inputs if key is None else [self._rounded(t, key) for t in self.inputs]
            dout = self._dout if key is None else self._rounded(self._dout, key)
            self._references[key] = self._run("reference", torch.float64, inputs, dout)
        return self._references[key]

    def why_not(self, backend: str, dtype: torch.dtype) -> str | None:
        """Why ``backend`` cannot run this case in ``dtype`` here, or None."""
        device = device_for(backend)
        q, k, v = (t.to(device=device, dtype=dtype) for t in self.inputs[:3])  # what the front doors dispatch on
        return _backend.can_run(self.op_name, backend, q, k, v)

    def check(self, backend: str, dtype: torch.dtype) -> None:
        """Compare ``backend`` in ``dtype`` with the reference: output and every gradient, each on its
        own; skips the test (with the reason) where the backend cannot run here."""
        why = self.why_not(backend, dtype)
        if why is not None:
            pytest.skip(f"{self.op_name}: backend {backend!r} cannot run here: {why}")
        want = self.reference(dtype)
        inputs = self.inputs if dtype not in LOW_PRECISION else [self._rounded(t, dtype) for t in self.inputs]
        dout = self._dout if dtype not in LOW_PRECISION else self._rounded(self._dout, dtype)
        if backend == "triton":
            with _testing.nan_filled_outputs():
                got = self._run(backend, dtype, inputs, dout)
        else:
            got = self._run(backend, dtype, inputs, dout)
        try:
            _testing.assert_all_close(got, {name: t.cpu() for name, t in want.items()})
        except AssertionError as e:
            raise AssertionError(f"{self.op_name} [{self.label}]: backend {backend!r}, {dtype}:\n{e}") from None


def assert_compiles_like_eager(fn: Callable, tensors: Sequence[torch.Tensor], names: Sequence[str]) -> None:
    """``torch.compile(fn, fullgraph=True)`` (aot_eager) gives the eager output and input gradients:
    the op's custom ops trace as opaque nodes with working fake kernels and autograd. ``tensors``
    require grad; ``names`` name their gradients."""
    _backend.preload()  # compile cannot trace a first-time import
    eager = fn(*tensors)
    eager_grads = torch.autograd.grad(eager.square().sum(), tensors)
    torch._dynamo.reset()
    out = torch.compile(fn, fullgraph=True, backend="aot_eager")(*tensors)
    grads = torch.autograd.grad(out.square().sum(), tensors)
    _testing.assert_close(out, eager)
    for name, a, b in zip(names, grads, eager_grads):
        _testing.assert_close(a, b, "grad", name)
