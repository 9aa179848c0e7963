"""Naive neighborhood attention: the spec every fast path is tested against.

Per axis of length ``n`` with kernel ``k``, dilation ``d`` and stride ``s`` (query ``i``):

* dilation group ``g = i mod d`` of length ``n_g = ceil((n - g) / d)``; position in group ``p = i // d``;
* the window is clamped to the group: ``k_g = min(k, n_g)`` (maps smaller than ``k * d`` attend to
  the whole group instead of failing);
* stride groups share the window of their leader ``l = min((p // s) * s + s // 2, n_g - 1)``;
* window start ``w = clamp(l - k // 2, 0, n_g - k_g)``; neighbours ``(w + j) * d + g`` for ``j < k_g``;
* relative-position-bias index ``(w + j) - p + (k - 1)`` in ``[0, 2k - 2]`` (NATTEN <= 0.17 layout);
* with ``valid = (Hv, Wv)`` (a zero-padded map) keys at row ``>= Hv`` or column ``>= Wv`` are masked;
  with ``valid = (H0, W0, H1, W1)`` keys outside rows ``[H0, H1)`` x columns ``[W0, W1)`` are masked
  (a map padded on every side); windows are placed on the padded map all the same.

Shifted windows (Swin), ``shift = s`` with ``0 <= s < P = kernel == stride`` and ``d = 1`` on the axis:
the axis is cut into cells at ``s + c * P`` (clipped to ``[0, n)``): ``[0, s), [s, s + P), ..., [last, n)``.
Query ``i`` lies in cell ``c = floor((i - s) / P)`` and attends to exactly the keys
``j in [max(0, s + c P), min(n, s + c P + P))``, with relative-position-bias index ``j - i + (P - 1)``
(key minus query, as above). On a map that is a multiple of ``P`` this is Swin's cyclic shift by
``-s`` + window partition + region mask; with ``s = 0`` it is blocked attention whose last window is
clipped at the border (instead of shifted inward).

This file gathers every window explicitly (k-fold memory): obviously correct, not fast. It is
TorchScript-compatible (``torch.jit.script``), so scripted models run it: :func:`na2d_padded` is the
front door's ``pad=True`` in that form.
"""
from __future__ import annotations

import torch

__all__ = ["as_region", "axis_tables", "na2d_padded", "na2d_reference"]


def as_region(valid: list[int] | None) -> tuple[int, int, int, int] | None:
    """A backend's ``valid`` argument as ``(H0, W0, H1, W1)``: ``(Hv, Wv)`` means ``(0, 0, Hv, Wv)``."""
    if valid is None:
        return None
    if len(valid) == 2:
        return 0, 0, valid[0], valid[1]
    return valid[0], valid[1], valid[2], valid[3]


def axis_tables(n: int, kernel: int, dilation: int, stride: int, device: torch.device | None = None,
                shift: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neighbour table of one axis; ``shift`` (not None) places Swin's shifted cells instead of NATTEN's
    windows (``stride == kernel`` and ``dilation == 1`` required).

    Returns:
        idx: ``[n, kernel]`` long, key index of each window slot (0 where the slot is unused).
        rel: ``[n, kernel]`` long, RPB index of each slot.
        valid: ``[n, kernel]`` bool, slot used (False where the group or cell is shorter than ``kernel``).
    """
    i = torch.arange(n, device=device)
    if shift is not None:
        if stride != kernel or dilation != 1:
            raise ValueError(f"shifted cells need stride == kernel and dilation 1, got kernel {kernel}, "
                             f"stride {stride}, dilation {dilation}")
        pos = ((i - shift).div(kernel, rounding_mode="floor") * kernel + shift)[:, None] + torch.arange(
            kernel, device=device)[None, :]
        valid = (pos >= 0) & (pos < n)
        return torch.where(valid, pos, 0), pos - i[:, None] + (kernel - 1), valid
    g = i % dilation
    p = i // dilation
    n_g = (n - g + dilation - 1) // dilation
    k_g = torch.clamp(n_g, max=kernel)
    leader = torch.minimum((p // stride) * stride + stride // 2, n_g - 1)
    start = torch.minimum(torch.clamp(leader - kernel // 2, min=0), n_g - k_g)
    j = torch.arange(kernel, device=device)
    pos = start[:, None] + j[None, :]
    valid = j[None, :] < k_g[:, None]
    pos = torch.where(valid, pos, torch.zeros_like(pos))
    idx = pos * dilation + g[:, None]
    rel = pos - p[:, None] + (kernel - 1)
    return idx, rel, valid


def na2d_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: list[int], dilation: list[int],
                   stride: list[int], rpb: torch.Tensor | None, scale: float, valid: list[int] | None = None,
                   shift: list[int | None] | None = None) -> torch.Tensor:
    """``[B, H, W, heads, D]`` in, ``[B, H, W, heads, D]`` out; arguments already validated.
    ``valid``: ``(Hv, Wv)`` or ``(H0, W0, H1, W1)``, the real keys; ``shift``: ``(sh, sw)`` Swin cells
    (``None`` per axis or overall: NATTEN windows). The front door :func:`~visionzoo.ops.neighborhood.na2d`
    serves ``shift`` by padding (blocked attention on a padded map); this direct form is its spec."""
    _, H, W, heads, _ = q.shape
    sh: int | None = None
    sw: int | None = None
    if shift is not None:
        sh, sw = shift[0], shift[1]
    ih, rh, vh = axis_tables(H, kernel_size[0], dilation[0], stride[0], q.device, sh)
    iw, rw, vw = axis_tables(W, kernel_size[1], dilation[1], stride[1], q.device, sw)
    hh = ih[:, None, :, None]  # [H, 1, kh, 1]
    ww = iw[None, :, None, :]  # [1, W, 1, kw]
    k_nb = k[:, hh, ww]  # [B, H, W, kh, kw, heads, D]
    v_nb = v[:, hh, ww]
    logits = torch.einsum("bxyhd,bxyijhd->bxyhij", q * scale, k_nb)
    if rpb is not None:
        logits = logits + rpb[:, rh[:, None, :, None], rw[None, :, None, :]].permute(1, 2, 0, 3, 4)
    region = as_region(valid)
    if region is not None:
        h0, w0, h1, w1 = region
        vh, vw = vh & (ih >= h0) & (ih < h1), vw & (iw >= w0) & (iw < w1)
    used = vh[:, None, :, None] & vw[None, :, None, :]  # [H, W, kh, kw]
    logits = logits.masked_fill(~used[:, :, None], float("-inf"))
    attn = logits.flatten(-2).softmax(-1).view_as(logits)
    return torch.einsum("bxyhij,bxyijhd->bxyhd", attn, v_nb)


def na2d_padded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: list[int], dilation: list[int],
                stride: list[int], rpb: torch.Tensor | None, scale: float) -> torch.Tensor:
    """``na2d(..., pad=True)`` (no ``shift``) on this reference, in TorchScript-compatible torch: the map
    zero-padded at the bottom/right to a multiple of ``stride * dilation`` per axis, the padding keys
    masked, the output cropped. Arguments already validated, and every window must hold a real key (the
    front door checks that; whole windows, ``stride == kernel_size``, always do)."""
    _, H, W, _, _ = q.shape
    hp = (H + stride[0] * dilation[0] - 1) // (stride[0] * dilation[0]) * stride[0] * dilation[0]
    wp = (W + stride[1] * dilation[1] - 1) // (stride[1] * dilation[1]) * stride[1] * dilation[1]
    if rpb is not None:
        rpb = rpb.to(q.dtype)
    if hp == H and wp == W:
        return na2d_reference(q, k, v, kernel_size, dilation, stride, rpb, scale)
    pad = [0, 0, 0, 0, 0, wp - W, 0, hp - H]  # F.pad lists the last dim (D) first
    q, k, v = (torch.nn.functional.pad(t, pad) for t in (q, k, v))
    out = na2d_reference(q, k, v, kernel_size, dilation, stride, rpb, scale, [H, W])
    return out[:, :H, :W]
