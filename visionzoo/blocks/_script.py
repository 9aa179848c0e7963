"""TorchScript helpers shared by the blocks and models."""
from __future__ import annotations

import types

__all__ = ["parent_forward"]


def parent_forward(cls: type, name: str):
    """``cls.forward`` as a method called ``name``: what ``super().forward`` is, in a form TorchScript
    compiles (it has no ``super()``, and compiles a method under its function's own name)."""
    fn = cls.forward
    return types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
