"""Functional ops: tensor in, tensor out. Each heavy op has its own sub-package with a
``reference.py`` oracle, a fast ``cpu.py`` path and a ``triton.py`` kernel, chosen by
:mod:`visionzoo.ops._backend`."""
from ._backend import BACKENDS, BackendUnavailable, current_backend, use_backend

__all__ = ["BACKENDS", "BackendUnavailable", "current_backend", "use_backend"]
