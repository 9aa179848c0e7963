"""Is a size a plain int, or a symbolic size of a trace (``torch.export`` / ``torch.compile`` with dynamic dims)?

The ops and blocks take a cheaper path for plain ints (slices, reshapes into windows, Python checks that loop
over the map) and a guard-free one for symbolic sizes (gathers, masks, closed-form checks). Outside Dynamo a
symbolic size is a ``torch.SymInt``. Under Dynamo (``torch.compile``, strict export) ``isinstance`` and
``type`` report every size as ``int``, so the plain-int path would run on symbolic sizes: each comparison a
guard, each loop over the map a guard per step (MaxViT's grid check took over 30 min to compile with dynamic
shapes). There a size counts as static only if it is *provably* different from an arbitrary huge value,
which holds for every int and for no size symbol (its value range is unbounded above); no guard is added.
"""
from __future__ import annotations

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

__all__ = ["is_static"]

#: a value no size takes: a symbolic size cannot be proved different from it, a plain int always is
_PROBE = 2 ** 62 + 1


def is_static(*sizes) -> bool:
    """Every size is a plain int (not a symbolic size of a trace), under Dynamo too."""
    if torch.compiler.is_dynamo_compiling():
        return all(statically_known_true(n != _PROBE) for n in sizes)
    return all(isinstance(n, int) for n in sizes)
