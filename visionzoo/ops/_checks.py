"""Argument checks shared by the attention ops (each op adds its own shape rules)."""
from __future__ import annotations

import torch

__all__ = ["check_qkv", "triton_attention_can_run"]


def check_qkv(q, k, v, ndim: int, layout: str) -> None:
    """q, k, v are tensors of ``ndim`` dims (``layout`` names them in the error), of one floating
    dtype, on one device."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() != ndim:
            raise ValueError(f"{name} must be {layout} ({ndim}-D), got shape {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise TypeError(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")


def triton_attention_can_run(q, k, v, **geometry) -> str | None:
    """The dispatch check of every Triton attention kernel: dtype and head-dim limits."""
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the Triton kernels take fp16/bf16/fp32, got {q.dtype}"
    if max(q.shape[-1], v.shape[-1]) > 256:
        return f"the Triton kernels take head dims up to 256, got {q.shape[-1]} (v: {v.shape[-1]})"
    return None
