"""Halo attention module (HaloNet) and the residual block that carries it.

:class:`HaloAttn2d` has timm's ``HaloAttn`` interface and parameter names (``q``, ``kv``,
``pos_embed.height_rel/width_rel``), so timm's HaloNet weights load unchanged, and runs
:func:`visionzoo.ops.halo.halo_attn` (any map size; cpu / Triton backends). Channel layout as
timm's: ``q`` is ``[heads, D]``, ``kv`` is ``[heads, D + Dv]`` (per head: keys then values).
:class:`HaloBlock` is timm's ``SelfAttnBlock`` (1x1 -> halo attention -> BN-act -> 1x1, residual)
plus the paper's ``r_v``: values (and the attention output) ``value_ratio`` times wider than
queries and keys.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import make_divisible, register_notrace_module, trunc_normal_
from timm.models.byobnet import SelfAttnBlock

from ..ops import halo_attn
from ..ops.halo.reference import halo_padded

__all__ = ["HaloAttn2d", "HaloBlock", "RelPosTables"]


class RelPosTables(nn.Module):
    """Factorised relative position embeddings ``height_rel``/``width_rel`` ``[2 win - 1, dim_head]``."""

    def __init__(self, win: int, dim_head: int, device=None, dtype=None):
        super().__init__()
        self.height_rel = nn.Parameter(torch.empty(2 * win - 1, dim_head, device=device, dtype=dtype))
        self.width_rel = nn.Parameter(torch.empty(2 * win - 1, dim_head, device=device, dtype=dtype))


@register_notrace_module  # a leaf for timm's FX feature extraction: padding to whole blocks is Python
class HaloAttn2d(nn.Module):
    """``[B, dim, H, W] -> [B, dim_out, ceil(H / stride), ceil(W / stride)]``, any ``H, W``.

    Args mirror timm's ``HaloAttn``: ``dim_head`` (q/k per head) defaults to
    ``make_divisible(dim_out * qk_ratio, 8) // num_heads``; values get ``dim_out // num_heads``.
    ``stride`` 2 subsamples queries inside each block (strided halo attention) when ``block_size``
    is even, else (or with ``avg_down``) attends at stride 1 and average-pools.
    """

    def __init__(self, dim: int, dim_out: int | None = None, feat_size=None, stride: int = 1, num_heads: int = 8,
                 dim_head: int | None = None, block_size: int = 8, halo_size: int = 3, qk_ratio: float = 1.0,
                 qkv_bias: bool = False, avg_down: bool = False, backend: str | None = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        dim_out = dim_out or dim
        if dim_out % num_heads:
            raise ValueError(f"HaloAttn2d: dim_out {dim_out} must be divisible by num_heads {num_heads}")
        if stride not in (1, 2):
            raise ValueError(f"HaloAttn2d: stride must be 1 or 2, got {stride}")
        self.num_heads = num_heads
        self.dim_head_qk = dim_head or make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
        self.dim_head_v = dim_out // num_heads
        self.scale = self.dim_head_qk ** -0.5
        self.block_size, self.halo_size = block_size, halo_size
        use_pool = stride > 1 and (avg_down or block_size % stride != 0)
        self.block_stride = 1 if use_pool else stride
        self.backend = backend
        self.q = nn.Conv2d(dim, num_heads * self.dim_head_qk, 1, stride=self.block_stride, bias=qkv_bias, **dd)
        self.kv = nn.Conv2d(dim, num_heads * (self.dim_head_qk + self.dim_head_v), 1, bias=qkv_bias, **dd)
        self.pos_embed = RelPosTables(block_size + 2 * halo_size, self.dim_head_qk, **dd)
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if use_pool else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.q.weight.shape[1] ** -0.5  # fan-in, as timm
        trunc_normal_(self.q.weight, std=std)
        trunc_normal_(self.kv.weight, std=std)
        trunc_normal_(self.pos_embed.height_rel, std=self.scale)
        trunc_normal_(self.pos_embed.width_rel, std=self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        heads, dqk, dv = self.num_heads, self.dim_head_qk, self.dim_head_v
        # a strided 1x1 conv is a subsample then a 1x1 conv; done that way because torch 2.14's CPU
        # backward of a stride-2 1x1 conv on some small channels-last inputs corrupts the heap
        s = self.block_stride
        xs = x[:, :, ::s, ::s] if s > 1 else x
        if s > 1 and not isinstance(H, int):  # symbolic sizes (torch.export with dynamic H, W): the conv's fake
            xs = xs.contiguous()  # kernel picks its output layout by comparing a strided view's strides (a guard)
        q = nn.functional.conv2d(xs, self.q.weight, self.q.bias)
        hq, wq = q.shape[-2:]
        q = q.view(B, heads, dqk, hq, wq).permute(0, 3, 4, 1, 2)
        k, v = self.kv(x).view(B, heads, dqk + dv, H, W).permute(0, 3, 4, 1, 2).split([dqk, dv], -1)
        if torch.jit.is_scripting():  # a static branch: TorchScript compiles the op's reference, not its front door
            out = halo_padded(q, k, v, self.block_size, self.halo_size, self.pos_embed.height_rel,
                              self.pos_embed.width_rel, self.block_stride, self.scale)
        else:
            out = halo_attn(q, k, v, self.block_size, self.halo_size, self.pos_embed.height_rel,
                            self.pos_embed.width_rel, stride=self.block_stride, scale=self.scale, backend=self.backend)
        out = out.reshape(B, hq, wq, heads * dv).permute(0, 3, 1, 2)  # NCHW view of channels-last memory
        return self.pool(out)

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, dim_head_qk={self.dim_head_qk}, dim_head_v={self.dim_head_v}, "
                f"block={self.block_size}, halo={self.halo_size}, stride={self.block_stride}")


class HaloBlock(SelfAttnBlock):
    """timm's ``SelfAttnBlock`` (same keys) with values ``value_ratio`` times the bottleneck width:
    the attention maps ``mid -> mid * value_ratio`` (queries/keys stay ``mid`` wide) and the
    post-attention norm and last 1x1 conv take that width."""

    def __init__(self, *args, value_ratio: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        if value_ratio != 1.0:
            dd = dict(device=kwargs.get("device"), dtype=kwargs.get("dtype"))
            layers, mid = kwargs["layers"], self.conv1_1x1.conv.out_channels
            wide = make_divisible(mid * value_ratio)
            self.self_attn = layers.self_attn(mid, dim_out=wide, stride=kwargs.get("stride", 1),
                                              qk_ratio=mid / wide, **dd)
            self.post_attn = layers.norm_act(wide, **dd)
            self.conv3_1x1 = layers.conv_norm_act(wide, kwargs["out_chs"], 1, apply_act=False, **dd)
