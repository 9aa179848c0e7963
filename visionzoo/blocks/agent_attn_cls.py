"""Agent attention over a class token and a patch map (Agent-DeiT, Han et al., ECCV 2024).

:class:`AgentAttnCls` is the official ``agent_deit.AgentAttention``: the tokens are ``[cls, patches]``
(``[B, 1 + H W, C]``) and, compared with :class:`~visionzoo.blocks.agent_attn.AgentAttn` on the patch map,

* the agents are pooled from the patch queries only (the class token is not pooled);
* every agent also reads the class token's key, with the bias ``ac_bias [1, heads, n, 1]`` (first
  column of the agents' bias), and the class token's query reads the agents with ``ca_bias
  [1, heads, 1, n]`` (first row of the queries' bias);
* ``dwc(v)`` is added to the patch tokens only (the class token has no position).

The patch biases (``an/na/ah/aw/ha/wa_bias``) are :class:`AgentAttn`'s: built for ``map_size`` and
interpolated to any ``H x W`` (see its docstring); the cached biases include the class-token entries.
At the build-time square map the result is the official one. At inference (eval, autograd off, fp32 CPU)
``qkv`` and ``proj`` run as oneDNN GEMMs (:func:`~visionzoo.blocks.fused_eval.linear`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ..ops.agent_attn import agent_attn
from ..ops.agent_attn.reference import agent_attn_reference
from . import fused_eval
from .agent_attn import AgentAttn

__all__ = ["AgentAttnCls"]


@register_notrace_module  # an FX leaf, as AgentAttn
class AgentAttnCls(AgentAttn):
    """Agent attention on ``[cls, patches]`` tokens, the official Agent-DeiT layer.

    Args: as :class:`~visionzoo.blocks.agent_attn.AgentAttn`.

    Shapes: ``forward(x, size)`` with ``x`` ``[B, 1 + H * W, C]`` (the class token first, then the
    ``H x W`` patch map row-major) and ``size = (H, W)``; returns ``[B, 1 + H * W, C]``.
    """

    bias_names = AgentAttn.bias_names + ("ac_bias", "ca_bias")

    def __init__(self, dim: int, num_heads: int, *, map_size: tuple[int, int], agent_num: int = 49,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0, backend: str | None = None,
                 device=None, dtype=None):
        super().__init__(dim, num_heads, map_size=map_size, agent_num=agent_num, qkv_bias=qkv_bias,
                         attn_drop=attn_drop, proj_drop=proj_drop, backend=backend, device=device, dtype=dtype)
        self.ac_bias = nn.Parameter(torch.empty(1, num_heads, agent_num, 1, device=device, dtype=dtype))
        self.ca_bias = nn.Parameter(torch.empty(1, num_heads, 1, agent_num, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name in self.bias_names:  # AgentAttn's __init__ calls this before the class-token biases exist
            if name in self._parameters:
                nn.init.trunc_normal_(getattr(self, name), std=0.02)

    def build_biases(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(bias_kv [heads, n, 1 + H W], bias_q [heads, 1 + H W, n])``: :class:`AgentAttn`'s patch biases
        with the class token's ``ac_bias`` column / ``ca_bias`` row first; ``bias_q`` is a transposed view."""
        kv, q = self.patch_biases(height, width)
        bias_kv = torch.cat([self.ac_bias[0], kv], -1)
        bias_q = torch.cat([self.ca_bias[0].transpose(1, 2), q.transpose(1, 2)], -1)
        return bias_kv, bias_q.transpose(1, 2)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        H, W = size
        if N != 1 + H * W:
            raise ValueError(f"AgentAttnCls: x must be [B, 1 + H * W, C] for size ({H}, {W}), got {list(x.shape)}")
        heads, hd = self.num_heads, self.head_dim
        if torch.jit.is_scripting():  # a static branch: TorchScript compiles the plain modules and the op's reference
            qkv = self.qkv(x)
        else:
            qkv = fused_eval.linear(self, self.qkv, x)  # [B, N, 3C]
        # one copy to heads-first q, k, v (the op's GEMMs then read them in place)
        q, k, v = qkv.view(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
        # agents: each head's patch queries pooled as a channels-last [B heads, hd, H, W] view (no copy)
        per_head = q[:, :, 1:].reshape(B * heads, H, W, hd).permute(0, 3, 1, 2)
        agents = F.adaptive_avg_pool2d(per_head, self.pool_size).permute(0, 2, 3, 1)
        agents = agents.reshape(B, heads, agents.shape[1] * agents.shape[2], hd)  # no -1: B may be 0
        if torch.jit.is_scripting():
            bias_kv, bias_q = self.build_biases(H, W)
            out = agent_attn_reference(q, k, v, agents, bias_kv.to(x.dtype), bias_q.to(x.dtype), self.scale)
        else:
            bias_kv, bias_q = self.biases(H, W, x.dtype)
            out = agent_attn(q, k, v, agents, bias_kv, bias_q, scale=self.scale, backend=self.backend)
        out = out.transpose(1, 2).reshape(B, N, C)
        v_map = qkv[:, 1:, 2 * C:].view(B, H, W, C).permute(0, 3, 1, 2)
        local = self.dwc(v_map).flatten(2).transpose(1, 2)  # [B, H W, C]
        if torch.is_grad_enabled():  # out of place: with one head `out` is a view of the op's (saved) output
            out = torch.cat([out[:, :1], out[:, 1:] + local], 1)
        else:
            out[:, 1:] += local
        if torch.jit.is_scripting():
            return self.proj_drop(self.proj(out))
        return self.proj_drop(fused_eval.linear(self, self.proj, out))
