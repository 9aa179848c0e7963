"""Channel attention: Squeeze-and-Excitation, ECA and CBAM, with the official papers' semantics.

All three map ``[B, C, H, W] -> [B, C, H, W]`` (the input rescaled) and are built through
:func:`create_channel_attn`, so a model only names the attention it wants.

* SE (Hu et al.): GAP -> 1x1 conv C->C/r (bias) -> ReLU -> 1x1 conv C/r->C (bias) -> sigmoid.
* ECA (Wang et al.): GAP -> Conv1d(1, 1, k, no bias) across channels -> sigmoid. ``k`` explicit, or
  the paper's adaptive rule ``k = |log2(C)/gamma + b/gamma|_odd`` (the official code never computes
  it; the released checkpoints pass k per stage).
* CBAM (Woo et al.): channel gate = the shared bias-MLP on the avg- and max-pooled vectors, summed,
  sigmoid; then spatial gate = concat[max, mean] over channels (max first, as the official code)
  -> 7x7 conv (no bias) + BN(eps 1e-5, momentum 0.01) -> sigmoid.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["SqueezeExcite", "EfficientChannelAttn", "CbamAttn", "ChannelMlp", "eca_kernel_size",
           "create_channel_attn", "CHANNEL_ATTN"]


def _check_channels(channels: int, who: str) -> None:
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"{who}: channels must be a positive int, got {channels!r}")


class ChannelMlp(nn.Module):
    """Bottleneck MLP on a pooled ``[B, C, 1, 1]`` vector (1x1 convs with bias): SE's excitation and
    CBAM's shared MLP."""

    def __init__(self, channels: int, hidden: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True, **dd)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SqueezeExcite(nn.Module):
    """SE block; ``reduction`` 16 as in SENet (hidden width ``channels // reduction``, at least 1)."""

    def __init__(self, channels: int, reduction: int = 16, device=None, dtype=None):
        super().__init__()
        _check_channels(channels, "SqueezeExcite")
        if reduction < 1:
            raise ValueError(f"SqueezeExcite: reduction must be >= 1, got {reduction}")
        self.mlp = ChannelMlp(channels, max(1, channels // reduction), device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mlp(x.mean((2, 3), keepdim=True)).sigmoid()


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """The ECA paper's adaptive kernel: ``t = int(|log2(C)/gamma + b/gamma|)``, made odd upward."""
    t = int(abs(math.log2(channels) / gamma + b / gamma))
    return t if t % 2 else t + 1


class EfficientChannelAttn(nn.Module):
    """ECA. ``kernel_size=None`` uses :func:`eca_kernel_size` (the paper's rule)."""

    def __init__(self, channels: int, kernel_size: int | None = None, gamma: int = 2, b: int = 1,
                 device=None, dtype=None):
        super().__init__()
        _check_channels(channels, "EfficientChannelAttn")
        k = eca_kernel_size(channels, gamma, b) if kernel_size is None else kernel_size
        if not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f"EfficientChannelAttn: kernel_size must be a positive odd int, got {k!r}")
        self.kernel_size = k
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.mean((2, 3)).unsqueeze(1))  # [B, 1, C]
        return x * y.transpose(1, 2).unsqueeze(-1).sigmoid()

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class _SpatialGate(nn.Module):
    def __init__(self, kernel_size: int = 7, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False, **dd)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return x * self.bn(self.conv(pooled)).sigmoid()


class _ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int = 16, device=None, dtype=None):
        super().__init__()
        self.mlp = ChannelMlp(channels, max(1, channels // reduction), device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean((2, 3), keepdim=True))
        mx = self.mlp(x.amax((2, 3), keepdim=True))
        return x * (avg + mx).sigmoid()


class CbamAttn(nn.Module):
    """CBAM: channel gate then spatial gate (``spatial=False`` gives the channel-only ablation)."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, spatial: bool = True,
                 device=None, dtype=None):
        super().__init__()
        _check_channels(channels, "CbamAttn")
        self.channel = _ChannelGate(channels, reduction, device=device, dtype=dtype)
        self.spatial = _SpatialGate(kernel_size, device=device, dtype=dtype) if spatial else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))

    def init_weights(self) -> None:
        """The official init: spatial-gate BN gamma 0, so the gate starts at sigmoid(0) = 0.5."""
        if isinstance(self.spatial, _SpatialGate):
            nn.init.zeros_(self.spatial.bn.weight)


CHANNEL_ATTN = {"se": SqueezeExcite, "eca": EfficientChannelAttn, "cbam": CbamAttn}


def create_channel_attn(name: str | None, channels: int, **kwargs) -> nn.Module:
    """Build channel attention ``name`` (``se``, ``eca``, ``cbam``; None or '' gives Identity)."""
    if not name:
        return nn.Identity()
    if name not in CHANNEL_ATTN:
        raise ValueError(f"create_channel_attn: unknown attention {name!r}; expected one of {sorted(CHANNEL_ATTN)}")
    return CHANNEL_ATTN[name](channels, **kwargs)

