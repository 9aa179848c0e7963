"""The token-mixer table: which attention runs in a block is a name and its options.

``create_token_mixer(kind, dim, num_heads, **options)`` builds a ``[B, H, W, C] -> [B, H, W, C]``
mixer, as :func:`~visionzoo.blocks.channel_attn.create_channel_attn` builds channel attention. The
runtime arguments every family passes (``attn_drop``, ``proj_drop``, ``backend``) reach the mixers
that take them; a mixer that does not take one refuses a non-default value, so nothing is silently
ignored. A new mixer is one line in :data:`TOKEN_MIXERS`.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch.nn as nn

from .agent_attn import AgentAttn
from .cswin_attn import CrossShapedWindowAttn, FocusedLinearAttnLePE
from .focused_linear_attn import FocusedLinearAttn
from .hilo_attn import HiLoAttn
from .large_kernel_attn import VanAttn
from .neighborhood_attn import NeighborhoodAttn2d
from .rel_pos_attn import GlobalRelPosAttn2d
from .routing_attn import BiLevelRoutingAttn, GlobalAttnLePE
from .window_attn import SwinWindowAttn

__all__ = ["TOKEN_MIXERS", "create_token_mixer"]

#: kind -> constructor ``(dim, num_heads, **options)``; ``None``: no mixer (an MLP-only block)
TOKEN_MIXERS: dict[str, Callable[..., nn.Module] | None] = {
    "none": None,  # no token mixer: the block is its MLP residual only (LITv2 stages 1-2)
    "na": NeighborhoodAttn2d,  # (dilated) neighborhood attention with RPB (NAT, DiNAT)
    "global_rpb": GlobalRelPosAttn2d,  # global attention with a relative position bias table (ViT-RPB)
    "bra": BiLevelRoutingAttn,  # bi-level routing attention (BiFormer)
    "global_lepe": GlobalAttnLePE,  # global attention with LePE (BiFormer's last stage)
    "lka": VanAttn,  # large-kernel attention with VAN's projections and inner shortcut
    "hilo": HiLoAttn,  # HiLo: s x s window heads + average-pooled global heads (LITv2)
    "focused_linear": FocusedLinearAttn,  # focused linear attention + shared DW conv on v (FLatten)
    "swin": SwinWindowAttn,  # Swin (shifted) window attention with its bias table (FLatten / Agent Swin)
    "agent": AgentAttn,  # agent attention with the official position biases and dwc(v) (Agent-PVT / Agent-Swin)
    "cswin": CrossShapedWindowAttn,  # cross-shaped stripe (or global) attention with LePE (CSWin 'B' / 'S' stages)
    "focused_linear_lepe": FocusedLinearAttnLePE,  # focused linear attention + LePE (FLatten-CSWin 'L' stages)
}

_RUNTIME_DEFAULTS = {"attn_drop": 0.0, "proj_drop": 0.0, "backend": None}


def create_token_mixer(kind: str, dim: int, num_heads: int, *, attn_drop: float = 0.0, proj_drop: float = 0.0,
                       backend: str | None = None, device=None, dtype=None, **options) -> nn.Module | None:
    """Build token mixer ``kind`` of width ``dim`` with ``num_heads`` heads (``None`` for kind ``'none'``).

    Args:
        options: the mixer's own constructor arguments (``kernel_size``, ``topk``...).
        attn_drop, proj_drop, backend: passed where the mixer takes them; elsewhere they must be default.
    """
    if kind not in TOKEN_MIXERS:
        raise ValueError(f"create_token_mixer: unknown mixer {kind!r}; expected one of {sorted(TOKEN_MIXERS)}")
    ctor = TOKEN_MIXERS[kind]
    if ctor is None:  # no mixer, so no attention or projection dropout to apply
        if options:
            raise ValueError(f"create_token_mixer: mixer {kind!r} takes no options (got {sorted(options)})")
        return None
    params = inspect.signature(ctor).parameters
    runtime = dict(attn_drop=attn_drop, proj_drop=proj_drop, backend=backend)
    for name, value in runtime.items():
        if name in params:
            options[name] = value
        elif value != _RUNTIME_DEFAULTS[name]:
            raise ValueError(f"create_token_mixer: mixer {kind!r} takes no {name} (got {value!r})")
    return ctor(dim, num_heads, **options, device=device, dtype=dtype)
