"""THE dispatch point: which implementation of an op runs.

Resolution order for every op call:

1. the explicit ``backend=`` argument;
2. the innermost :func:`use_backend` context;
3. the ``VISIONZOO_BACKEND`` environment variable;
4. auto: CUDA tensors with a runnable Triton kernel -> ``triton``; CPU tensors -> ``cpu``;
   anything else -> ``reference``.

Then, once for every op, the rule for empty inputs and for tracing (:func:`tracing`):

* an input with no elements (a batch of 0) runs ``reference``, whatever was asked: every fast path
  tiles or launches over the batch, the reference's ATen ops return correctly shaped empty outputs and
  gradients;
* under ``torch.jit.trace`` / ``torch.jit.script`` the ``cpu`` path is replaced by ``reference``: the
  trace records plain ATen ops (no C++ kernel call or cached index table gets baked into it);
* under ``torch.compile`` and ``torch.export`` (strict or not) the ``cpu`` path runs as its
  ``torch.library`` custom op (:mod:`._custom_op`): an opaque node with a fake kernel and autograd,
  decomposed to the reference by ``run_decompositions`` and the ONNX exporter. Triton paths are custom
  ops already; ``reference`` is traced as it is;
* under ``torch.fx`` symbolic tracing the front doors are leaves (:func:`fx_leaf`): one
  ``call_function`` node each, run eagerly by the traced module.

Each of these returns what the plain path returns: the same function, computed another way.

An explicitly requested backend that cannot run raises :class:`BackendUnavailable` with the
reason. Auto selection never raises: it falls back to ``reference``. Implementations are
imported lazily (``module:function`` strings), so a missing Triton fails when called, never at
import. Backends compute the same function: switching never changes parameters or state.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch.fx.experimental.symbolic_shapes import guard_or_false

from .. import _env

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "can_run",
    "current_backend",
    "fx_leaf",
    "preload",
    "register_op",
    "resolve",
    "tracing",
    "triton_available",
    "triton_unavailable",
    "use_backend",
]

_logger = logging.getLogger(__name__)

BACKENDS = ("reference", "cpu", "triton")

#: a predicate gets the op's tensors and keyword geometry and returns None (can run) or why not
CanRun = Callable[..., "str | None"]


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run this call; the message says why."""


@dataclass
class _OpEntry:
    impls: dict[str, str]  # backend -> "module:function"
    checks: dict[str, CanRun] = field(default_factory=dict)
    loaded: dict[str, Callable] = field(default_factory=dict)
    opaque: Callable | None = None  # the cpu path as a custom op (see _custom_op)


_OPS: dict[str, _OpEntry] = {}
_STACK: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("visionzoo_backend", default=())
_LOGGED: set[tuple[str, str, str]] = set()


def _check_name(name: str, what: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS and name != "auto":
        raise ValueError(f"{what}: unknown backend {name!r}; expected one of {BACKENDS + ('auto',)}")
    return name


def register_op(op: str, impls: dict[str, str], checks: dict[str, CanRun] | None = None,
                schema: str | None = None, diff: tuple[int, ...] = (), fake: Callable | None = None) -> None:
    """Declare the implementations of ``op``.

    Args:
        op: public op name, e.g. ``"na2d"``.
        impls: backend name -> ``"package.module:function"``, imported on first use.
        checks: backend name -> predicate returning ``None`` or the reason it cannot run.
        schema, diff, fake: the ``cpu`` implementation's arguments as a ``torch.library`` schema, the
            positions of its differentiable tensors and its fake kernel: with them the ``cpu`` path
            runs as the custom op ``visionzoo::{op}_cpu`` under compile and export (see :mod:`._custom_op`).
    """
    for name in impls:
        _check_name(name, f"register_op({op!r})")
    if "reference" not in impls:
        raise ValueError(f"register_op({op!r}): every op needs a 'reference' implementation")
    entry = _OpEntry(dict(impls), dict(checks or {}))
    if schema is not None and "cpu" in impls:
        from ._custom_op import opaque_op
        entry.opaque = opaque_op(f"{op}_cpu", schema, functools.partial(_load, entry, "cpu", op),
                                 functools.partial(_load, entry, "reference", op), diff, fake)
    _OPS[op] = entry


def tracing() -> str | None:
    """``"jit"`` under ``torch.jit`` tracing or scripting, ``"compile"`` under ``torch.compile`` or
    ``torch.export``, ``None`` in eager mode."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return "jit"
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return "compile"
    return None


def fx_leaf(fn: Callable) -> Callable:
    """``fn`` as a ``torch.fx`` leaf: called with an FX proxy among its arguments (symbolic tracing of a
    caller: ``torch.fx.symbolic_trace``, torchvision's ``create_feature_extractor``, timm's FX features), it
    records one ``call_function`` node instead of running; the traced module calls ``fn`` itself. Any
    other call runs ``fn``."""
    @functools.wraps(fn)
    def leaf(*args, **kwargs):
        proxy = next(_proxies(args, kwargs), None)
        if proxy is not None:
            return proxy.tracer.create_proxy("call_function", leaf, args, kwargs)
        return fn(*args, **kwargs)
    return leaf


def _proxies(args, kwargs) -> Iterator[torch.fx.Proxy]:
    stack = [*args, *kwargs.values()]
    while stack:
        a = stack.pop()
        if isinstance(a, torch.fx.Proxy):
            yield a
        elif isinstance(a, (tuple, list)):
            stack.extend(a)
        elif isinstance(a, dict):
            stack.extend(a.values())


_TRITON_STATUS: list = []  # [None | reason], filled on first use; a plain value so torch.compile traces it


def triton_unavailable() -> str | None:
    """Why Triton cannot be imported, or ``None`` if it can (checked once per process)."""
    if not _TRITON_STATUS:
        try:
            importlib.import_module("triton")
            _TRITON_STATUS.append(None)
        except Exception as e:  # ImportError, or a broken install raising something else
            _TRITON_STATUS.append(f"triton cannot be imported ({type(e).__name__}: {e})")
    return _TRITON_STATUS[0]


#: deprecated name of :func:`triton_unavailable` (it returns a reason, not a bool); kept for old callers
triton_available = triton_unavailable


def _load(entry: _OpEntry, name: str, op: str = "") -> Callable:
    """The implementation function, imported on first use.

    ``torch.compile`` cannot trace ``importlib``: a module imported earlier is taken from
    ``sys.modules``; call :func:`preload` before compiling a graph whose first call happens inside it.
    An implementation that cannot be imported raises :class:`BackendUnavailable` with the reason.
    """
    fn = entry.loaded.get(name)
    if fn is None:
        module, _, attr = entry.impls[name].partition(":")
        try:
            mod = sys.modules.get(module)
            if mod is None:
                mod = importlib.import_module(module)
            fn = getattr(mod, attr)
        except (ImportError, AttributeError) as e:  # e.g. a kernel module whose dependency is broken
            raise BackendUnavailable(f"{op or 'op'}: backend {name!r} cannot be loaded from "
                                     f"{entry.impls[name]!r} ({type(e).__name__}: {e})") from e
        entry.loaded[name] = fn
    return fn


def preload(*tensors: torch.Tensor) -> list[str]:
    """Import every implementation that can run here (for these example tensors, or CPU), so
    that ``torch.compile(fullgraph=True)`` never meets a first-time import. Returns what loaded."""
    tensors = tensors or (torch.empty(0),)
    loaded = []
    for op, entry in _OPS.items():
        for name in entry.impls:
            if _default_check(name, tensors) is None:
                _load(entry, name)
                loaded.append(f"{op}:{name}")
    return loaded


def _default_check(backend: str, tensors: tuple[torch.Tensor, ...]) -> str | None:
    devices = {t.device.type for t in tensors if isinstance(t, torch.Tensor)}
    if backend == "cpu" and devices - {"cpu"}:
        return f"the 'cpu' backend needs CPU tensors, got {sorted(devices)}"
    if backend == "triton":
        why = triton_unavailable()
        if why:
            return why
        if devices - {"cuda"} and not (_env.triton_interpret() and devices <= {"cpu"}):
            return (f"Triton kernels need CUDA tensors (got {sorted(devices)}); "
                    "set TRITON_INTERPRET=1 before import to run them on CPU tensors for testing")
    return None


def can_run(op: str, backend: str, *tensors: torch.Tensor, **geometry) -> str | None:
    """``None`` if ``backend`` can run ``op`` on these inputs, else the reason it cannot."""
    entry = _OPS.get(op)
    if entry is None:
        raise KeyError(f"unknown op {op!r}; registered ops: {sorted(_OPS)}")
    if backend not in entry.impls:
        return f"op {op!r} has no {backend!r} implementation (it has {sorted(entry.impls)})"
    why = _default_check(backend, tensors)
    if why is None and backend in entry.checks:
        why = entry.checks[backend](*tensors, **geometry)
    return why


def _auto(op: str, tensors: tuple[torch.Tensor, ...], geometry: dict) -> tuple[Callable, str]:
    devices = {t.device.type for t in tensors if isinstance(t, torch.Tensor)}
    if devices == {"cuda"}:
        order = ("triton", "reference")
    elif devices == {"cpu"}:
        order = ("cpu", "reference")
    else:
        order = ("reference",)
    for name in order:
        why = can_run(op, name, *tensors, **geometry)
        if why is None:
            try:
                return _pick(op, name, tensors), name
            except BackendUnavailable as e:
                if name == "reference":
                    raise
                why = str(e)
        key = (op, name, why)
        if key not in _LOGGED:
            _LOGGED.add(key)
            _logger.debug("visionzoo.%s: not using %s backend: %s", op, name, why)
    return _load(_OPS[op], "reference", op), "reference"


def current_backend() -> str | None:
    """The backend forced by context or environment, or ``None`` for auto."""
    stack = _STACK.get()
    if stack:
        return None if stack[-1] == "auto" else stack[-1]
    env = _env.backend_override()
    if env is not None:
        env = _check_name(env, "VISIONZOO_BACKEND")
        return None if env == "auto" else env
    return None


def resolve(op: str, *tensors: torch.Tensor, backend: str | None = None, **geometry) -> tuple[Callable, str]:
    """Pick the implementation of ``op`` for these inputs; returns ``(function, backend_name)``.

    The backend name is the one chosen by the resolution order; the function follows the empty-input
    and tracing rules of the module docstring (e.g. ``cpu`` under ``torch.compile`` is its custom op)."""
    if op not in _OPS:
        raise KeyError(f"unknown op {op!r}; registered ops: {sorted(_OPS)}")
    requested = _check_name(backend, f"{op}(backend=...)") if backend is not None else current_backend()
    if requested in (None, "auto"):
        return _auto(op, tensors, geometry)
    why = can_run(op, requested, *tensors, **geometry)
    if why is not None:
        raise BackendUnavailable(f"{op}: backend {requested!r} cannot run this call: {why}")
    return _pick(op, requested, tensors), requested


def _pick(op: str, name: str, tensors: tuple) -> Callable:
    """The function that serves backend ``name``: the rule of the module docstring for empty inputs and
    tracing. (Under ``torch.compile`` the ``cpu`` custom op is returned without importing the eager path.)"""
    entry = _OPS[op]
    mode = tracing()
    if name == "reference" or (mode == "jit" and name == "cpu"):  # torch.jit: sizes are traced tensors
        return _load(entry, "reference", op)
    # guard_or_false: a symbolic numel that may be 0 (unbacked) keeps the backend instead of failing the trace
    # (torch.jit traces numel() as a tensor: there the triton backend keeps its own empty-input handling)
    if mode != "jit" and any(isinstance(t, torch.Tensor) and guard_or_false(t.numel() == 0) for t in tensors):
        name = "reference"
    elif name == "cpu" and mode == "compile" and entry.opaque is not None:
        return entry.opaque
    return _load(entry, name, op)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force ``name`` (or ``"auto"``) for every op called inside the block. Contexts nest."""
    name = _check_name(name, "use_backend")
    token = _STACK.set(_STACK.get() + (name,))
    try:
        yield
    finally:
        _STACK.reset(token)
