"""Large-kernel attention's spatial part (VAN): ``lka``.

VAN's LKA decomposes a large depthwise kernel into a ``k0 x k0`` depthwise convolution followed by a
``k1 x k1`` depthwise convolution with dilation ``d``. With VAN's 5x5 and 7x7-dilation-3 the output
pixel sees ``(k0 - 1) + d (k1 - 1) + 1 = 23`` input pixels per axis (2 + 9 on each side). This op
computes those two convolutions; the 1x1 convolution and the gate ``u * attn`` stay in the block.
"""
from __future__ import annotations

import torch

from .. import _backend

__all__ = ["lka"]

#: the largest kernel side / padding the Triton kernel takes (VAN: k0 5, k1 7, dilation 3 -> padding 9)
TRITON_MAX_PAD = 16

_backend.register_op(
    "lka",
    impls={
        "reference": "visionzoo.ops.lka.reference:lka_reference",
        "cpu": "visionzoo.ops.lka.cpu:lka_cpu",
        "triton": "visionzoo.ops.lka.triton:lka_triton",
    },
    checks={"triton": lambda *tensors, **geometry: _triton_can_run(*tensors, **geometry)},
    schema="(Tensor x, Tensor w0, Tensor? b0, Tensor w1, Tensor? b1, int dilation)",
    diff=(0, 1, 2, 3, 4),
    fake=lambda x, *_: x.new_empty(x.shape),
)


def _triton_can_run(x, *tensors, pad0: int = 0, pad1: int = 0, **_) -> str | None:
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the Triton LKA kernel takes fp16/bf16/fp32, got {x.dtype}"
    if max(pad0, pad1) > TRITON_MAX_PAD:
        return f"the Triton LKA kernel takes paddings up to {TRITON_MAX_PAD}, got {pad0} and {pad1}"
    return None


def _check(x, w0, b0, w1, b1, dilation):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a [B, C, H, W] tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got {x.dtype}")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"x must have H, W >= 1, got {tuple(x.shape)}")
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 1:
        raise ValueError(f"dilation must be an int >= 1, got {dilation!r}")
    c = x.shape[1]
    for name, w in (("w0", w0), ("w1", w1)):
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(w).__name__}")
        k = w.shape[-1] if w.dim() == 4 else -1
        if w.dim() != 4 or tuple(w.shape) != (c, 1, k, k):
            raise ValueError(f"{name} must be a depthwise kernel [C, 1, k, k] with C = {c} (x's channels), "
                             f"got {tuple(w.shape)}")
        if k % 2 == 0:
            raise ValueError(f"{name} must have an odd kernel size (the map size is kept), got {k}")
    for name, b in (("b0", b0), ("b1", b1)):
        if b is not None and (not isinstance(b, torch.Tensor) or tuple(b.shape) != (c,)):
            raise ValueError(f"{name} must be None or a [C] = [{c}] tensor, got "
                             f"{tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}")
    for name, t in (("w0", w0), ("b0", b0), ("w1", w1), ("b1", b1)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}, got {t.device}")


@_backend.fx_leaf
def lka(x: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor | None, w1: torch.Tensor, b1: torch.Tensor | None,
        dilation: int = 3, backend: str | None = None) -> torch.Tensor:
    """The two depthwise convolutions of VAN's large-kernel attention, same map size in and out.

    ``y = dwconv(dwconv(x, w0, b0, padding=k0 // 2), w1, b1, dilation, padding=dilation * (k1 // 2))``,
    exactly ``F.conv2d(..., groups=C)`` twice (zero padding, so any ``H, W >= 1`` works, including
    maps smaller than the receptive field).

    Args:
        x: ``[B, C, H, W]``, any memory format (contiguous or channels_last); float dtype.
        w0: ``[C, 1, k0, k0]``, odd ``k0`` (VAN: 5).
        b0: ``[C]`` or None.
        w1: ``[C, 1, k1, k1]``, odd ``k1`` (VAN: 7).
        b1: ``[C]`` or None.
        dilation: dilation of the second convolution (VAN: 3).
        backend: ``reference`` | ``cpu`` | ``triton`` | None (see :mod:`visionzoo.ops._backend`).

    Returns:
        ``[B, C, H, W]`` in x's dtype (the memory format may differ from x's; values do not).
    """
    _check(x, w0, b0, w1, b1, dilation)
    fn, _ = _backend.resolve("lka", x, w0, w1, backend=backend, pad0=w0.shape[-1] // 2,
                             pad1=dilation * (w1.shape[-1] // 2))
    return fn(x, w0, b0, w1, b1, dilation)
