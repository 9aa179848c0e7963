"""Every heavy op (and the partition helpers) under the deployment paths: ``torch.export`` (strict and
non-strict, dynamic dims), ONNX through the dynamo exporter run in onnxruntime, ``torch.jit.trace``,
``torch.compile(fullgraph=True)`` in training at two shapes and with ``dynamic=True``, and ``torch.fx``
symbolic tracing of a caller. Each result is compared with eager at a second input shape.

Default tier: the ``cpu`` backend (what auto-dispatch picks for CPU tensors, a custom op under compile and
export), non-strict export, ONNX, trace, FX, and ``torch.compile`` with the ``aot_eager`` backend (Dynamo and
AOTAutograd: fake kernels, autograd, guards). Extended tier (each Inductor compile builds C++ for minutes
on this host): strict export, the ``reference`` backend on every path, and Inductor.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.export import Dim
from torch.utils._python_dispatch import TorchDispatchMode

from visionzoo.ops import _custom_op, use_backend

from ._export_cases import BY_NAME, CASES

NAMES = [c.name for c in CASES]
#: cases exported as custom ops (the partition helpers are plain ATen ops)
OPAQUE = [n for n in NAMES if n != "partition"]


def _setup(name: str, shape: int = 0, grad: bool = False):
    case = BY_NAME[name]
    torch.manual_seed(0)
    model = case.make()
    torch.manual_seed(1 + shape)
    inputs = tuple(t.requires_grad_(grad) for t in case.inputs(*case.shapes[shape]))
    return case, model, inputs


def _dynamic_shapes(case):
    return tuple({d: Dim.DYNAMIC for d in dims} for dims in case.dynamic)


def _export(name: str, strict: bool):
    case, model, inputs = _setup(name)
    ep = torch.export.export(model, inputs, dynamic_shapes=_dynamic_shapes(case), strict=strict)
    _, _, second = _setup(name, 1)
    torch.testing.assert_close(ep.module()(*second), model(*second), atol=1e-5, rtol=1e-5)
    return ep


def _ops(ep) -> set[str]:
    """Every op called in the program, nested graphs (autocast, no_grad regions) included."""
    return {
        str(n.target)
        for m in ep.graph_module.modules()
        if isinstance(m, torch.fx.GraphModule)
        for n in m.graph.nodes
        if n.op == "call_function"
    }


@pytest.mark.parametrize("name", NAMES)
def test_export_non_strict_dynamic(name):
    ep = _export(name, strict=False)
    ops = _ops(ep)
    if name in OPAQUE:  # the cpu path is one opaque node, never its index tables or C++ calls
        assert any(str(t).startswith("visionzoo.") for t in ops), ops


@pytest.mark.extended  # strict export traces every front door with Dynamo: ~10 s per op
@pytest.mark.parametrize("name", NAMES)
def test_export_strict_dynamic(name):
    _export(name, strict=True)


@pytest.mark.parametrize("name", OPAQUE)
def test_run_decompositions_gives_plain_aten(name):
    ep = _export(name, strict=False).run_decompositions(_custom_op.decompositions())
    ops = _ops(ep)
    assert not any(t.startswith("visionzoo.") for t in ops), ops
    _, model, second = _setup(name, 1)
    torch.testing.assert_close(ep.module()(*second), model(*second), atol=1e-5, rtol=1e-5)


class _Record(TorchDispatchMode):
    """Records the visionzoo custom-op calls (and their arguments) of whatever runs inside."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "visionzoo":
            self.calls.append((func, args))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", OPAQUE)
def test_custom_op_opcheck(name):
    """torch.library.opcheck on the op as the exported program calls it: schema, fake kernel, autograd
    registration."""
    ep = _export(name, strict=False)
    _, _, inputs = _setup(name)
    with _Record() as rec:
        ep.module()(*inputs)
    assert rec.calls
    for func, args in rec.calls:
        args = tuple(
            a.detach().requires_grad_(a.is_floating_point()) if isinstance(a, torch.Tensor) else a for a in args
        )
        # test_aot_dispatch_dynamic is what the torch.compile tests below do, at two shapes
        torch.library.opcheck(func, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def _onnx(name: str, tmp_path) -> float:
    ort = pytest.importorskip("onnxruntime")
    case, model, inputs = _setup(name)
    model.eval()
    path = tmp_path / f"{name}.onnx"
    program = torch.onnx.export(model, inputs, dynamo=True, dynamic_shapes=_dynamic_shapes(case), verbose=False)
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, _, second = _setup(name, 1)
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), second)}
    got = torch.from_numpy(session.run(None, feeds)[0])
    want = model(*second).detach()
    assert got.shape == want.shape
    return float((got - want).abs().max())


@pytest.mark.parametrize("name", NAMES)
def test_onnx_dynamo_matches_eager(name, tmp_path):
    assert _onnx(name, tmp_path) <= 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_jit_trace(name):
    _, model, inputs = _setup(name)
    with torch.no_grad():
        traced = torch.jit.trace(model, inputs, check_trace=False)
        graph = str(traced.inlined_graph)
        torch.testing.assert_close(traced(*inputs), model(*inputs), atol=1e-5, rtol=1e-5)
    assert "visionzoo" not in graph.replace("visionzoo/", "")  # plain ATen ops only: no custom op, no C++ kernel


@pytest.mark.parametrize("name", NAMES)
def test_fx_symbolic_trace(name):
    """A caller traces with the op (and the partition helpers) as leaves: call_function nodes run eagerly."""
    _, model, _ = _setup(name)
    gm = torch.fx.symbolic_trace(model)
    leaves = {getattr(n.target, "__module__", "") for n in gm.graph.nodes if n.op == "call_function"}
    assert any(m.startswith("visionzoo.ops") for m in leaves), leaves
    _, _, second = _setup(name, 1)
    torch.testing.assert_close(gm(*second), model(*second))


def _train_step(fn, model, inputs):
    model.zero_grad()
    inputs = tuple(t.detach().requires_grad_(True) for t in inputs)
    out = fn(*inputs)
    out.square().sum().backward()
    params = [p.grad for p in model.parameters()]
    return [out.detach(), *[t.grad for t in inputs], *params]


def _compile_train(name: str, backend: str, dynamic: bool | None, op_backend: str = "cpu"):
    torch._dynamo.reset()
    _, model, _ = _setup(name)
    compiled = torch.compile(model, fullgraph=True, backend=backend, dynamic=dynamic)
    with use_backend(op_backend) if op_backend != "cpu" else contextlib.nullcontext():
        for shape in (0, 1):
            _, _, inputs = _setup(name, shape)
            got = _train_step(compiled, model, inputs)
            want = _train_step(model, model, inputs)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_compile_train_two_shapes(name):
    _compile_train(name, "aot_eager", dynamic=None)


@pytest.mark.parametrize("name", NAMES)
def test_compile_train_dynamic(name):
    _compile_train(name, "aot_eager", dynamic=True)


@pytest.mark.parametrize("dynamic", [None, True])
def test_compile_inductor_na2d(dynamic):
    """The two Inductor failures of issue 21 (second shape: 'qt aliases an input'; dynamic: 'cannot
    determine truth value of Relational'), on the op where they were seen."""
    _compile_train("na2d", "inductor", dynamic=dynamic)


@pytest.mark.extended  # Inductor builds C++ for every graph: minutes per op on this host
@pytest.mark.parametrize("dynamic", [None, True])
@pytest.mark.parametrize("name", NAMES)
def test_compile_inductor(name, dynamic):
    _compile_train(name, "inductor", dynamic=dynamic)


@pytest.mark.extended  # the reference path traced op by op: ~1 min in all
@pytest.mark.parametrize("name", NAMES)
def test_reference_backend_paths(name, tmp_path):
    with use_backend("reference"):
        _export(name, strict=False)
        assert _onnx(name, tmp_path) <= 1e-4
        test_jit_trace(name)
    _compile_train(name, "aot_eager", dynamic=True, op_backend="reference")
