"""CPU path of LKA: the same two depthwise convolutions, arranged so that oneDNN runs its fast kernels.

Measured on this CPU (AVX-512, 1 thread, VAN-b1 stage shapes, batch 8; ``benchmarks/bench_lka.py`` has
the same-run ratios):

* oneDNN's depthwise convolution is several times slower when the convolution pads the map itself
  than on an explicitly zero-padded map with ``padding=0`` (the dilated 7x7 with padding 9: 46 ms vs
  3 ms at 64 x 56 x 56; 7 ms vs 1 ms at 512 x 7 x 7). So both convolutions pad first, and the pad
  (:func:`_pad`) also converts to channels_last (NHWC), the faster layout for both convolutions, in the
  same copy; the result is converted back, so the output has the input's memory format, like the reference.
* Kernel taps that can only read padding (a dilated 7x7 on a 7x7 map: the outer ring of taps) are
  dropped, and the padding shrinks with them: same result, fewer FLOPs on small maps.
* Backward (eager, autograd on): ATen's depthwise backward pays the same padding penalty for the
  input gradient, so ``dx`` is computed as the forward convolution of ``dy`` with the flipped kernel
  (a 'same' convolution is its own transpose up to the flip). The weight (and bias) gradients come from
  visionzoo's AVX-512 kernel (:func:`visionzoo.ops._cpu.dwconv_wgrad`) on the padded maps the forward
  saved: ATen's ``convolution_backward`` has no fast depthwise weight-gradient kernel (oneDNN's is not used
  for this case); it was the slow part of the backward. Same-run minimum times (1 thread, batch 8, with the
  bias gradient, host loaded), weight gradient of the dilated 7x7 / the 5x5, ATen vs the kernel, and the
  forward convolutions (oneDNN) for scale: stage 1 (64 x 56 x 56) 40 / 19 ms vs 3.0 / 1.3 ms (forward
  3.7 / 1.3 ms); stage 2 (128 x 28) 24 / 11 vs 2.1 / 0.8 (2.0 / 0.6); stage 3 (320 x 14) 15 / 5.1 vs
  2.0 / 0.8 (1.7 / 0.6); stage 4 (512 x 7, 5x5 taps left of the 7x7) 12 / 4.1 vs 0.5 / 0.3 (0.5 / 0.3).
  Where the kernels are unavailable (``VISIONZOO_CPU_EXT=0``, no AVX-512, no compiler:
  :func:`visionzoo.ops._cpu.cpu_ext_unavailable`) or the dtype is not float32, ATen's
  ``convolution_backward`` (weight only) runs instead.
* ``benchmarks/bench_lka.py --threads 1``, two runs on 2026-12-05 (0 of 9 rounds quiet in each: the
  shared host was loaded): fwd+bwd / fwd = 2.8-3.0 / 3.1-3.2 / 2.8-3.3 / 3.5-3.7 at stages 1-4 (was
  7.5-8.8 with ATen's weight gradients; the reference's own ratio 5.3-5.5 / 5.2-5.4 / 3.7-3.8 / 3.5),
  forward 2.7-5.0x the reference: the <= 3 target is met or missed by up to ~25 % depending on the run.
  What is left of the backward is oneDNN's two input-gradient convolutions (as costly as the forward's),
  the kernel's two passes, the copies an NCHW caller implies (the output to NCHW, ``dy`` to
  channels_last) and, on small maps, first-touch page faults of the padded buffers (a 7x7 map padded by
  6 is 7.4x larger).

Under ``torch.compile`` / ``torch.export`` this path runs as the custom op ``visionzoo::lka_cpu``; under
``torch.jit`` the reference runs instead (the rule lives in :mod:`visionzoo.ops._backend`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _cpu

__all__ = ["lka_cpu"]


def _taps(k: int, dilation: int, n: int) -> tuple[int, int]:
    """The taps ``[lo, hi)`` of one axis of a 'same' ``k``-tap convolution that can reach a map of size ``n``
    (tap ``t`` reads offset ``t * dilation - pad``: it reads only padding when that is >= n away)."""
    pad = dilation * (k // 2)
    lo = next(t for t in range(k) if abs(t * dilation - pad) < n)
    return lo, k - lo


def _geometry(w: torch.Tensor, dilation: int, size: tuple[int, int]):
    """Cropped weight, its tap slices and the explicit padding ``(left, right, top, bottom)``."""
    (r0, r1), (c0, c1) = (_taps(w.shape[-1], dilation, n) for n in size)
    ph, pw = dilation * ((r1 - r0) // 2), dilation * ((c1 - c0) // 2)
    return (slice(r0, r1), slice(c0, c1)), (pw, pw, ph, ph)


def _pad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """``F.pad(x, pad)`` as a new channels_last tensor, in one copy from any memory format (an NCHW map is
    transposed and padded in one pass instead of two)."""
    left, right, top, bottom = pad
    n, c, h, w = x.shape
    out = torch.empty(
        (n, c, h + top + bottom, w + left + right), dtype=x.dtype, device=x.device, memory_format=torch.channels_last
    ).zero_()
    out[:, :, top : top + h, left : left + w] = x
    return out


def _dwconv_padded(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, dilation: int):
    """'Same' depthwise convolution as an explicit zero pad and a ``padding=0`` convolution: ``(y, padded x)``."""
    (rows, cols), pad = _geometry(w, dilation, x.shape[-2:])
    xp = _pad(x, pad)
    return F.conv2d(xp, w[:, :, rows, cols], b, dilation=dilation, groups=x.shape[1]), xp


def _dwconv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, dilation: int) -> torch.Tensor:
    return _dwconv_padded(x, w, b, dilation)[0]


def _wgrad(dy: torch.Tensor, xp: torch.Tensor, w: torch.Tensor, dilation: int, weight: bool, bias: bool):
    """Gradients ``(dw or None, db or None)`` of ``y = _dwconv(x, w, b, dilation)`` from ``xp``, the padded ``x``
    (zeros in ``dw`` for the dropped taps): visionzoo's C++ kernel (both in one pass), else ATen's."""
    if not weight:
        return None, dy.sum((0, 2, 3)) if bias else None
    (rows, cols), _ = _geometry(w, dilation, dy.shape[-2:])
    if _cpu.cpu_ext_unavailable(dy, xp) is None:
        dwc, db = _cpu.dwconv_wgrad(dy, xp, (rows.stop - rows.start, cols.stop - cols.start), dilation, bias)
    else:
        _, dwc, _ = torch.ops.aten.convolution_backward(
            dy,
            xp,
            w[:, :, rows, cols],
            None,
            [1, 1],
            [0, 0],
            [dilation, dilation],
            False,
            [0, 0],
            dy.shape[1],
            [False, True, False],
        )
        db = dy.sum((0, 2, 3)) if bias else None
    if dwc.shape == w.shape:
        return dwc, db
    dw = torch.zeros_like(w)
    dw[:, :, rows, cols] = dwc
    return dw, db


class _LKA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w0, b0, w1, b1, dilation):
        a, xp = _dwconv_padded(x, w0, b0, 1)
        y, ap = _dwconv_padded(a, w1, b1, dilation)
        ctx.save_for_backward(xp, ap, w0, w1)  # the padded maps: the weight gradients read them as they are
        ctx.dilation, ctx.has_bias = dilation, (b0 is not None, b1 is not None)
        return y

    @staticmethod
    def backward(ctx, dy):
        xp, ap, w0, w1 = ctx.saved_tensors
        d = ctx.dilation
        need = ctx.needs_input_grad
        (rows, cols), pad = _geometry(w1, d, dy.shape[-2:])
        dyp = _pad(dy, pad)  # one copy: channels_last and padded for da's convolution
        dy = dyp[:, :, pad[2] : pad[2] + dy.shape[2], pad[0] : pad[0] + dy.shape[3]]
        dw1, db1 = _wgrad(dy, ap, w1, d, need[3], need[4] and ctx.has_bias[1])
        w1f = w1[:, :, rows, cols].flip(-1, -2)
        da = F.conv2d(dyp, w1f, dilation=d, groups=dy.shape[1]) if any(need[:3]) else None
        dx = _dwconv(da, w0.flip(-1, -2), None, 1) if need[0] else None
        dw0, db0 = _wgrad(da, xp, w0, 1, need[1], need[2] and ctx.has_bias[0]) if any(need[1:3]) else (None, None)
        return dx, dw0, db0, dw1, db1, None


def lka_cpu(x, w0, b0, w1, b1, dilation):
    """``x [B, C, H, W]`` -> ``[B, C, H, W]`` in x's memory format (see :mod:`.reference` for the definition)."""
    fmt = (
        torch.channels_last
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        else torch.contiguous_format
    )
    if not torch.is_grad_enabled():  # the first pad also converts x to channels_last
        y = _dwconv(_dwconv(x, w0, b0, 1), w1, b1, dilation)
    else:
        y = _LKA.apply(x, w0, b0, w1, b1, dilation)
    return y.contiguous(memory_format=fmt)
