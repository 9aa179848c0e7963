"""An eager fast path as a ``torch.library`` custom op: what compilers and exporters see of it.

The CPU paths of the heavy ops are eager Python (index tables cached per geometry, custom
``autograd.Function``s, the optional C++ kernels of :mod:`._cpu`): tracing into them fails (data-dependent
guards, tensors saved across a trace, C++ calls a tracer cannot record). :func:`opaque_op` registers such a
path as an opaque node instead:

* ``visionzoo::{name}`` (forward) and ``visionzoo::{name}_backward`` are ``torch.library.custom_op``s with
  fake kernels, so ``torch.compile(fullgraph=True)`` (any shape, ``dynamic=True``) and ``torch.export``
  (strict or not, dynamic dims) trace them as single nodes and call the eager path at run time;
* autograd is registered between them; the backward op **recomputes** the forward under autograd and
  differentiates it (one extra forward per backward, only in compiled or exported graphs: the eager path
  keeps its own saved-tensor backward). Recomputing keeps the op's outputs to the one documented tensor, so
  the fake kernel needs no knowledge of the fast path's tiling;
* the op's **decomposition** is the op's ``reference`` implementation (plain ATen ops), registered in
  ``torch._decomp.decomposition_table``: ``ExportedProgram.run_decompositions(decompositions())`` and the ONNX
  exporter (``torch.onnx.export(..., dynamo=True)`` decomposes every op it cannot translate through that
  table) replace the node by standard ops, so the ONNX file runs in onnxruntime with no custom domain.
  A custom-domain ONNX op would need an onnxruntime kernel build per platform; the decomposition runs
  everywhere, at the reference's memory cost (it gathers windows explicitly).

Outputs are returned contiguous (the fake kernel promises that layout to Inductor).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

__all__ = ["decompositions", "opaque_op"]

_DECOMPOSITIONS: dict = {}


def decompositions() -> dict:
    """``{op overload: reference}`` of every registered opaque op, for ``ExportedProgram.run_decompositions``."""
    return dict(_DECOMPOSITIONS)


def _fresh(t: torch.Tensor, inputs: Sequence) -> torch.Tensor:
    """``t`` contiguous and sharing no storage with ``inputs`` (a custom op may not return aliases)."""
    t = t.contiguous()
    ptr = t.untyped_storage().data_ptr()
    if any(isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() == ptr for a in inputs):
        t = t.clone()
    return t


def opaque_op(
    name: str,
    schema: str,
    impl: Callable[[], Callable],
    reference: Callable[[], Callable],
    diff: Sequence[int],
    fake: Callable,
) -> Callable:
    """Register ``visionzoo::{name}`` for an eager implementation and return it, callable like the implementation.

    Args:
        name: op name without namespace.
        schema: the arguments, e.g. ``"(Tensor q, Tensor k, Tensor v, float scale)"`` (the op returns one Tensor).
        impl: returns the eager implementation (imported on first call).
        reference: returns the plain-ATen implementation with the same arguments (the decomposition).
        diff: positions of the differentiable tensor arguments (optional ones may be None).
        fake: ``fake(*args) -> Tensor``, an empty output of the right shape, dtype and device.
    """
    n_args = len(schema.strip("()").split(","))
    out_grads = "Tensor[]"
    fwd = torch.library.custom_op(
        f"visionzoo::{name}",
        lambda *args: _fresh(_run(impl(), args), args),
        mutates_args=(),
        schema=f"{schema} -> Tensor",
    )
    fwd.register_fake(lambda *args: fake(*args).contiguous())
    bwd_schema = f"(Tensor dout, {schema.strip('()')}, bool[] needs) -> {out_grads}"

    def bwd_impl(dout, *rest):
        *args, needs = rest
        args = list(args)
        leaves = []
        for i, need in zip(diff, needs):
            if need:
                args[i] = args[i].detach().requires_grad_(True)
                leaves.append(args[i])
        with _autograd_on():
            out = impl()(*args)
            grads = iter(torch.autograd.grad(out, leaves, dout, allow_unused=True))
        result = []
        for i, need in zip(diff, needs):
            g = next(grads) if need else None
            if need and g is None:
                g = torch.zeros_like(args[i])
            result.append(_fresh(g, (dout, *args)) if need else dout.new_empty(0))
        return result

    def bwd_fake(dout, *rest):
        *args, needs = rest
        return [args[i].new_empty(args[i].shape) if need else dout.new_empty(0) for i, need in zip(diff, needs)]

    bwd = torch.library.custom_op(f"visionzoo::{name}_backward", bwd_impl, mutates_args=(), schema=bwd_schema)
    bwd.register_fake(bwd_fake)

    def setup_context(ctx, inputs, output):
        ctx.tensor_pos = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor)]
        ctx.save_for_backward(*(inputs[i] for i in ctx.tensor_pos))
        ctx.rest = {i: a for i, a in enumerate(inputs) if not isinstance(a, torch.Tensor)}

    def backward(ctx, dout):
        args = [None] * (len(ctx.tensor_pos) + len(ctx.rest))
        for i, t in zip(ctx.tensor_pos, ctx.saved_tensors):
            args[i] = t
        for i, a in ctx.rest.items():
            args[i] = a
        needs = [bool(ctx.needs_input_grad[i]) and args[i] is not None for i in diff]
        grads = [None] * len(args)
        if any(needs):
            for i, need, g in zip(diff, needs, bwd(dout, *args, needs)):
                if need:
                    grads[i] = g
        return tuple(grads)

    fwd.register_autograd(backward, setup_context=setup_context)
    overload = getattr(torch.ops.visionzoo, name).default

    def decomposition(*args, **kwargs):
        return reference()(*args, **kwargs)

    torch._decomp.register_decomposition(overload)(decomposition)
    _DECOMPOSITIONS[overload] = decomposition
    # FakeTensor prefers a registered decomposition over the fake kernel for symbolic sizes unless the op has a
    # Python meta: without this entry every export / compile with dynamic dims ran the reference on fake tensors
    # (minutes of symbolic algebra per model instead of the fake kernel's one empty tensor)
    torch._decomp.meta_table[overload] = lambda *args, **kwargs: fake(*args, **kwargs).contiguous()

    def call(*args):
        return fwd(*args, *[None] * (n_args - len(args)))

    return call


@contextlib.contextmanager
def _autograd_on():
    """Autograd recording inside a custom op's kernel, which runs below the autograd dispatch keys."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (torch._C.DispatchKey.AutogradFunctionality, torch._C.DispatchKey.ADInplaceOrView):
        exclude = exclude.remove(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude), torch.enable_grad():
        yield


def _run(fn: Callable, args) -> torch.Tensor:
    with torch.no_grad():
        return fn(*args)
