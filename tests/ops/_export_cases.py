"""One small module per heavy op, with inputs at two shapes and the dims that may vary: what the export,
ONNX, trace, compile and FX tests (``test_op_export.py``) and the batch-of-0 tests (``test_op_batch0.py``)
run every op through."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from visionzoo.ops import agent_attn, bra, halo_attn, linear_attn, lka, na1d, na2d, partition


def _param(*shape) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * 0.5)


class NA2d(nn.Module):
    def __init__(self, heads=2, kernel=3, dilation=1):
        super().__init__()
        self.kernel, self.dilation = kernel, dilation
        self.rpb = _param(heads, 2 * kernel - 1, 2 * kernel - 1)

    def forward(self, q, k, v):
        return na2d(q, k, v, self.kernel, self.dilation, rpb=self.rpb)


class NA2dWindows(nn.Module):
    """Swin's shifted windows on a padded map (the masked layout): ``pad`` and ``shift``."""

    def forward(self, q, k, v):
        return na2d(q, k, v, 4, stride=4, shift=2, pad=True)


class NA1d(nn.Module):
    def forward(self, q, k, v):
        return na1d(q, k, v, 3, dilation=2)


class BRA(nn.Module):
    def forward(self, q, k, v):
        return bra(q, k, v, n_win=2, topk=2)


class Halo(nn.Module):
    def __init__(self, dim=8, block=4, halo=1):
        super().__init__()
        self.block, self.halo = block, halo
        win = block + 2 * halo
        self.rel_h, self.rel_w = _param(2 * win - 1, dim), _param(2 * win - 1, dim)

    def forward(self, q, k, v):
        return halo_attn(q, k, v, self.block, self.halo, self.rel_h, self.rel_w)


class LKA(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.w0, self.b0 = _param(c, 1, 5, 5), _param(c)
        self.w1, self.b1 = _param(c, 1, 7, 7), _param(c)

    def forward(self, x):
        return lka(x, self.w0, self.b0, self.w1, self.b1, dilation=3)


class LinearAttn(nn.Module):
    def __init__(self, c=8, n=6):
        super().__init__()
        self.scale, self.pos = _param(1, 1, c), _param(1, n, c)

    def forward(self, q, k, v):
        return linear_attn(q, k, v, num_heads=2, focusing_factor=3.0, scale=self.scale, pos=self.pos)


class AgentAttn(nn.Module):
    def __init__(self, heads=2, agents=4, m=6):
        super().__init__()
        self.bias_kv = _param(heads, agents, m)

    def forward(self, q, k, v, agents):
        return agent_attn(q, k, v, agents, self.bias_kv)


class Windows(nn.Module):
    """The partition helpers around a pointwise op: pad to whole windows, partition, undo, crop."""

    def forward(self, x):
        xp, size = partition.pad_to_multiple(x, 4)
        w = partition.to_windows(xp, 4) * 2.0
        return partition.crop(partition.from_windows(w, 4, xp.shape[1:3]), size)


@dataclass
class Case:
    name: str
    make: Callable[[], nn.Module]
    inputs: Callable[[int, int, int], tuple[torch.Tensor, ...]]  # (batch, h, w) -> inputs
    #: per input: {dim: name} of the dims that vary between the two test shapes (and are exported dynamic)
    dynamic: tuple[dict[int, str], ...]
    #: (batch, h, w) of the two shapes
    shapes: tuple[tuple[int, int, int], tuple[int, int, int]] = ((2, 9, 10), (3, 7, 12))

    def __repr__(self) -> str:
        return self.name


def _map(b, h, w, heads=2, d=8):
    return tuple(torch.randn(b, h, w, heads, d) for _ in range(3))


_BHW = {0: "batch", 1: "h", 2: "w"}
_B = {0: "batch"}

CASES = [
    Case("na2d", NA2d, _map, (_BHW,) * 3),
    # a padded map: F.pad's copy into the padded tensor compares strides of the two map sizes, a guard
    # that specializes H and W (batch stays dynamic)
    Case("na2d_windows", NA2dWindows, _map, (_B,) * 3, ((2, 9, 10), (3, 9, 10))),
    Case("na1d", NA1d, lambda b, h, w: tuple(torch.randn(b, w, 2, 8) for _ in range(3)), ({0: "batch", 1: "w"},) * 3),
    # the region size follows the map size, and the routing's sum-pool takes it as a static kernel size
    Case("bra", BRA, _map, (_B,) * 3, ((2, 9, 10), (3, 9, 10))),
    Case("halo", Halo, _map, (_BHW,) * 3, ((2, 8, 12), (3, 12, 8))),
    Case("lka", LKA, lambda b, h, w: (torch.randn(b, 4, h, w),), ({0: "batch", 2: "h", 3: "w"},)),
    Case(
        "linear_attn",
        LinearAttn,
        lambda b, h, w: (torch.randn(b, h * 2, 8), torch.randn(b, 6, 8), torch.randn(b, 6, 8)),
        ({0: "batch", 1: "n"}, _B, _B),
    ),
    Case(
        "agent_attn",
        AgentAttn,
        lambda b, h, w: (
            torch.randn(b, 2, h, 8),
            torch.randn(b, 2, 6, 8),
            torch.randn(b, 2, 6, 8),
            torch.randn(b, 2, 4, 8),
        ),
        ({0: "batch", 2: "n"}, _B, _B, _B),
    ),
    Case("partition", Windows, lambda b, h, w: (torch.randn(b, h, w, 3),), (_B,), ((2, 9, 10), (3, 9, 10))),
]

BY_NAME = {c.name: c for c in CASES}
