"""THE dispatch point: which implementation of an op runs.

Resolution order for every op call:

1. the explicit ``backend=`` argument;
2. the innermost :func:`use_backend` context;
3. the ``VISIONZOO_BACKEND`` environment variable;
4. auto: CUDA tensors with a runnable Triton kernel -> ``triton``; CPU tensors -> ``cpu``;
   anything else -> ``reference``.

An explicitly requested backend that cannot run raises :class:`BackendUnavailable` with the
reason. Auto selection never raises: it falls back to ``reference``. Implementations are
imported lazily (``module:function`` strings), so a missing Triton fails when called, never at
import. Backends compute the same function: switching never changes parameters or state.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from .. import _env

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "register_op",
    "resolve",
    "can_run",
    "use_backend",
    "current_backend",
    "triton_unavailable",
    "triton_available",
    "preload",
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


_OPS: dict[str, _OpEntry] = {}
_STACK: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("visionzoo_backend", default=())
_LOGGED: set[tuple[str, str, str]] = set()


def _check_name(name: str, what: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS and name != "auto":
        raise ValueError(f"{what}: unknown backend {name!r}; expected one of {BACKENDS + ('auto',)}")
    return name


def register_op(op: str, impls: dict[str, str], checks: dict[str, CanRun] | None = None) -> None:
    """Declare the implementations of ``op``.

    Args:
        op: public op name, e.g. ``"na2d"``.
        impls: backend name -> ``"package.module:function"``, imported on first use.
        checks: backend name -> predicate returning ``None`` or the reason it cannot run.
    """
    for name in impls:
        _check_name(name, f"register_op({op!r})")
    if "reference" not in impls:
        raise ValueError(f"register_op({op!r}): every op needs a 'reference' implementation")
    _OPS[op] = _OpEntry(dict(impls), dict(checks or {}))


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
                return _load(_OPS[op], name, op), name
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
    """Pick the implementation of ``op`` for these inputs; returns ``(function, backend_name)``."""
    if op not in _OPS:
        raise KeyError(f"unknown op {op!r}; registered ops: {sorted(_OPS)}")
    requested = _check_name(backend, f"{op}(backend=...)") if backend is not None else current_backend()
    if requested in (None, "auto"):
        return _auto(op, tensors, geometry)
    why = can_run(op, requested, *tensors, **geometry)
    if why is not None:
        raise BackendUnavailable(f"{op}: backend {requested!r} cannot run this call: {why}")
    return _load(_OPS[op], requested, op), requested


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force ``name`` (or ``"auto"``) for every op called inside the block. Contexts nest."""
    name = _check_name(name, "use_backend")
    token = _STACK.set(_STACK.get() + (name,))
    try:
        yield
    finally:
        _STACK.reset(token)
