"""Channels-last trunks on CPU.

oneDNN, which runs PyTorch's CPU convolutions, works natively in channels-last (NHWC) memory; an
NCHW input is reordered around every convolution. A stem that first makes a channels-last copy of
its input puts every later layer of a conv net in that format (their outputs keep the input's
memory format). Tensors stay logically NCHW: only their strides differ.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ChannelsLastStem"]


class ChannelsLastStem(nn.Sequential):
    """``nn.Sequential`` (same keys) that runs on a channels-last copy of its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        for module in self:
            x = module(x)
        return x
