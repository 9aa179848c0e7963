"""Cross-shaped window attention with LePE (Dong et al., *CSWin Transformer*, CVPR 2022) on ``[B, H, W, C]`` maps,
and the LePE-carrying focused linear attention of FLatten-CSWin.

:class:`CrossShapedWindowAttn` is the official ``CSWinBlock`` attention (``qkv``, the ``LePEAttention`` branches,
``proj``; the qkv / proj the official block owns are the mixer's here):

* stripes (``global_attn=False``): the first ``C / 2`` channels (``heads / 2`` heads) attend within vertical
  stripes ``H x sw`` (official branch ``idx 0``), the other half within horizontal stripes ``sw x W``
  (``idx 1``); each is :func:`stripe_attention`: one :func:`~visionzoo.ops.neighborhood.na2d` call with
  ``kernel_size = stride`` the stripe, so every ``na2d`` backend serves it (on the ``cpu`` backend, maps that
  are whole stripes take a batched-GEMM fast path: stripes are short sequences);
* global (``global_attn=True``, the official last stage, or a stage whose build-time map equals its split):
  one branch, all heads, over the whole map (one ``H x W`` window);
* LePE: a depthwise 3x3 convolution of ``v`` computed per stripe window (zero padding at every stripe border,
  as the official ``get_lepe`` convolves the partitioned windows), added to the attention output.
  The two official ``get_v`` convolutions (``C / 2`` channels each) are one depthwise ``lepe`` conv of ``C``
  channels here: channels ``[0, C/2)`` are branch 0's, ``[C/2, C)`` branch 1's (converters concatenate).

Maps whose side is not a multiple of ``sw`` (any input size; the official model asserts its build size): the
map is zero-padded at the bottom / right to whole stripes, padding keys are masked (``na2d(pad=True)``) and
the output is cropped; LePE sees the zero padding as it sees a stripe border. A stripe wider than the map is
clamped to the map (the same result: its padding would be masked).

:class:`FocusedLinearAttnLePE` is FLatten-CSWin's global 'L' attention: the focused linear attention of
:class:`~visionzoo.blocks.focused_linear_attn.FocusedLinearAttn` (``sr_ratio`` 1) plus the same LePE conv over
the whole map. Agent-CSWin's global 'A' attention is :class:`~visionzoo.blocks.agent_attn.AgentAttn` itself
(its ``dwc`` is the official ``get_v``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ..ops import _backend
from ..ops._sizes import is_static
from ..ops.neighborhood import na2d
from ..ops.neighborhood.reference import na2d_padded
from ..ops.partition import crop, from_windows, pad_map, to_windows
from .focused_linear_attn import FocusedLinearAttn

__all__ = ["CrossShapedWindowAttn", "FocusedLinearAttnLePE", "stripe_attention", "stripes", "windowed_dwconv"]


def stripes(height: int, width: int, split_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The two stripe windows on an ``height x width`` map: vertical ``(H, sw)`` and horizontal ``(sw, W)``, the
    split clamped to the map (``torch.sym_min``: symbolic sizes of ``torch.export`` / ``torch.compile`` with
    dynamic H, W stay symbolic, no guard)."""
    return (height, torch.sym_min(split_size, width)), (torch.sym_min(split_size, height), width)



def windowed_dwconv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    window: tuple[int, int]) -> torch.Tensor:
    """A depthwise ``k x k`` convolution (``weight [c, 1, k, k]``, zero padding ``k // 2``) applied to every
    ``window`` of ``x`` (``[B, H, W, c]``) separately: no tap crosses a window border. The map is zero-padded
    at the bottom / right to whole windows and cropped back. Returns ``[B, H, W, c]``."""
    B, H, W, c = x.shape
    wh, ww = window
    k = weight.shape[-1]
    p = k // 2
    if not is_static(H, W, wh, ww):
        return _windowed_dwconv_taps(x, weight, bias, window)
    nchw = x.permute(0, 3, 1, 2)
    if (wh, ww) == (H, W):  # one window: the plain convolution
        return F.conv2d(nchw, weight, bias, padding=p, groups=c).permute(0, 2, 3, 1)
    # 1-wide windows spanning the other axis: only the kernel's middle column / row reaches inside a window
    if ww == 1 and wh == H:
        return F.conv2d(nchw, weight[..., p:p + 1], bias, padding=(p, 0), groups=c).permute(0, 2, 3, 1)
    if wh == 1 and ww == W:
        return F.conv2d(nchw, weight[:, :, p:p + 1], bias, padding=(0, p), groups=c).permute(0, 2, 3, 1)
    hp, wp = -(-H // wh) * wh, -(-W // ww) * ww
    win = to_windows(pad_map(x, 0, hp - H, 0, wp - W), (wh, ww))  # [B, n, wh * ww, c]
    n = win.shape[1]
    win = win.reshape(B * n, wh, ww, c).permute(0, 3, 1, 2)
    out = F.conv2d(win, weight, bias, padding=p, groups=c).permute(0, 2, 3, 1).reshape(B, n, wh * ww, c)
    return crop(from_windows(out, (wh, ww), (hp, wp)), (H, W))


def _windowed_dwconv_taps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          window: tuple[int, int]) -> torch.Tensor:
    """:func:`windowed_dwconv` for symbolic sizes (``torch.export`` / ``torch.compile`` with dynamic H, W): a sum
    over the ``k x k`` taps of the shifted map, each masked where the tap leaves its window or the map. No
    window partition, whose reshapes and crop would guard on (and specialize) the number of windows."""
    B, H, W, c = x.shape
    (wh, ww), k = window, weight.shape[-1]
    p = k // 2
    xp = F.pad(x, (0, 0, p, p, p, p))
    rows, cols = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
    out = x.new_zeros(B, H, W, c) if bias is None else bias.expand(B, H, W, c)
    for dy in range(k):
        r = rows + (dy - p)
        keep_r = (r >= 0) & (r < H) & (r.div(wh, rounding_mode="floor") == rows.div(wh, rounding_mode="floor"))
        for dx in range(k):
            q = cols + (dx - p)
            keep_c = (q >= 0) & (q < W) & (q.div(ww, rounding_mode="floor") == cols.div(ww, rounding_mode="floor"))
            keep = (keep_r[:, None] & keep_c[None, :]).to(x.dtype)[None, :, :, None]
            out = out + xp[:, dy:dy + H, dx:dx + W] * keep * weight[:, 0, dy, dx]
    return out


#: the longest window the cpu fast path takes (its ``[windows, heads, L, L]`` scores are materialised)
FAST_MAX_TOKENS = 1024
#: inference attends the windows in chunks of about this many bytes of scores: fresh multi-MiB score tensors per
#: call cost page faults that the chunks' two reused buffers do not (stage 1 of CSWin-T: 1.41x -> 1.82x the plain
#: formulation in one same-run measurement, ``benchmarks/bench_cswin.py``)
CHUNK_BYTES = 1 << 18


def _window_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: tuple[int, int], scale: float,
                 out: torch.Tensor) -> None:
    """Softmax attention inside every ``window`` of ``[B, H, W, heads, D]`` maps that are whole windows, as
    batched GEMMs around one softmax (in inference: per chunk of windows), written into ``out``
    (``[B, H, W, heads, D]``, any strides)."""
    B, H, W, heads, d = q.shape
    (wh, ww), dv = window, v.shape[-1]
    nh, nw = H // wh, W // ww

    def part(t):  # [B * nh * nw * heads, wh * ww, D], contiguous: bmm on strided views runs ~5x slower on CPU
        t = t.reshape(B, nh, wh, nw, ww, heads, t.shape[-1]).permute(0, 1, 3, 5, 2, 4, 6)
        return t.reshape(-1, wh * ww, t.shape[-1]).contiguous()
    qw, kw, vw = part(q), part(k), part(v)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        res = torch.bmm(torch.bmm(qw, kw.transpose(1, 2)).mul_(scale).softmax(-1), vw)
    else:  # inference: windows in chunks of ~CHUNK_BYTES of scores, into two buffers allocated once
        res = torch.empty_like(vw)
        n, L = qw.shape[:2]
        step = max(1, min(n, CHUNK_BYTES // (L * L * qw.element_size())))
        scores, probs = qw.new_empty(step, L, L), qw.new_empty(step, L, L)
        for i in range(0, n, step):
            j = min(n, i + step)
            sc, pr = scores[:j - i], probs[:j - i]
            torch.bmm(qw[i:j], kw[i:j].transpose(1, 2), out=sc).mul_(scale)
            torch.ops.aten._softmax.out(sc, -1, False, out=pr)
            torch.bmm(pr, vw[i:j], out=res[i:j])
    out.view(B, nh, wh, nw, ww, heads, dv).copy_(res.view(B, nh, nw, heads, wh, ww, dv).permute(0, 1, 4, 2, 5, 3, 6))


def stripe_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: tuple[int, int], scale: float,
                     backend: str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention inside disjoint ``window`` blocks of ``[B, H, W, heads, D]`` maps: ``na2d`` with
    ``kernel_size = stride = window`` and ``pad=True`` (maps that are not whole windows padded, padding keys
    masked). Where ``na2d`` would run its ``cpu`` backend on whole windows of at most :data:`FAST_MAX_TOKENS`
    tokens, the windows are attended with two batched GEMMs around one softmax instead: for CSWin's stripes
    (56 or 98 tokens) that is faster than the flash kernel the ``cpu`` backend and SDPA pick, whose tiles are
    sized for long sequences (``benchmarks/bench_cswin.py``). Returns ``out`` (``[B, H, W, heads, Dv]``; allocated
    when None) holding the result."""
    B, H, W, heads, _ = q.shape
    if out is None:
        out = q.new_empty(B, H, W, heads, v.shape[-1])
    # eager only: under export / compile the sizes may be symbolic, and divisibility would guard on them
    if q.device.type == "cpu" and _backend.tracing() is None and H % window[0] == 0 and W % window[1] == 0 \
            and window[0] * window[1] <= FAST_MAX_TOKENS:
        _, name = _backend.resolve("na2d", q, k, v, backend=backend, kernel_size=window, dilation=(1, 1),
                                   stride=window)
        if name == "cpu":
            _window_math(q, k, v, window, scale, out)
            return out
    return out.copy_(na2d(q, k, v, window, stride=window, scale=scale, pad=True, backend=backend))


def _lepe_kernel_mask(windows, height: int, width: int, c: int) -> torch.Tensor | None:
    """Where every branch's window spans the map or is 1 wide along an axis, the per-window LePE is one 3x3
    depthwise conv over the whole map whose kernel keeps only the taps inside a window: ``[nb * c, 1, 3, 3]``
    mask (1 wide along W: the middle column, along H: the middle row). None where a window cuts an axis
    elsewhere (stripes wider than 1 on a longer map), and for symbolic sizes (each window then convolves apart:
    the same result for every size, no guard on the sizes)."""
    if not is_static(height, width, *(n for w in windows for n in w)):
        return None
    masks = []
    for wh, ww in windows:
        if wh not in (1, height) or ww not in (1, width):
            return None
        rows = torch.tensor([0.0, 1.0, 0.0]) if wh == 1 and height > 1 else torch.ones(3)
        cols = torch.tensor([0.0, 1.0, 0.0]) if ww == 1 and width > 1 else torch.ones(3)
        masks.append((rows[:, None] * cols[None, :]).expand(c, 1, 3, 3))
    return torch.cat(masks)


@register_notrace_module  # an FX leaf: the stripes are Python on the runtime map size
class CrossShapedWindowAttn(nn.Module):
    """CSWin attention: half the heads in vertical, half in horizontal stripes of width ``split_size`` (or all
    heads over the whole map), with LePE; ``[B, H, W, C] -> [B, H, W, C]``, any ``H, W >= 1``.

    Args:
        dim: channels ``C`` (divisible by ``num_heads``; for stripes also ``num_heads`` even).
        num_heads: attention heads (``num_heads / 2`` per stripe direction).
        split_size: stripe width ``sw`` (official ``split_size``).
        global_attn: one window over the whole map (the official last stage).
        qkv_bias: bias on ``qkv``.
        qk_scale: logit scale, default ``head_dim ** -0.5``.
        attn_drop: must be 0 (``na2d`` applies no attention dropout; every official configuration uses 0).
        proj_drop: dropout after ``proj``.
        backend: ``na2d`` backend (``None``: resolved per call).
    """

    def __init__(self, dim: int, num_heads: int, *, split_size: int = 7, global_attn: bool = False,
                 qkv_bias: bool = True, qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 backend: str | None = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        branches = 1 if global_attn else 2
        if num_heads < 1 or dim % num_heads or num_heads % branches:
            raise ValueError(f"CrossShapedWindowAttn: dim ({dim}) must be divisible by num_heads ({num_heads})"
                             + ("" if global_attn else ", and num_heads even (half per stripe direction)"))
        if not isinstance(split_size, int) or isinstance(split_size, bool) or split_size < 1:
            raise ValueError(f"CrossShapedWindowAttn: split_size must be an int >= 1, got {split_size!r}")
        if attn_drop:
            raise ValueError(f"CrossShapedWindowAttn: attn_drop={attn_drop} is not supported (na2d applies no "
                             "dropout to attention probabilities); use proj_drop / drop_path instead")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.split_size, self.global_attn, self.branches = split_size, bool(global_attn), branches
        self.scale = qk_scale or self.head_dim ** -0.5
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def windows(self, height: int, width: int) -> tuple[tuple[int, int], ...]:
        """The window of each branch on a ``height x width`` map."""
        if torch.jit.is_tracing():  # sizes are traced tensors: the trace keeps this map's stripes
            height, width = int(height), int(width)
        return ((height, width),) if self.global_attn else stripes(height, width, self.split_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_drop(self.proj(self.mix(self.qkv(x))))

    def mix(self, qkv: torch.Tensor) -> torch.Tensor:
        """The input of ``proj`` (``[B, H, W, C]``) from the ``qkv`` projection (``[B, H, W, 3C]``): the stripe (or
        global) attention of every branch plus its LePE, branches side by side along channels."""
        if torch.jit.is_scripting():  # a static branch: TorchScript compiles the ops' references only
            return self._mix_scripted(qkv)
        B, H, W, C3 = qkv.shape
        C = C3 // 3
        c, heads, d = C // self.branches, self.num_heads // self.branches, self.head_dim
        # unbind, not slices: their backward stacks the gradients instead of zero-filling a qkv-sized tensor each
        q, k, v = qkv.reshape(B, H, W, 3, C).unbind(3)
        branches = [t.reshape(B, H, W, self.branches, heads, d).unbind(3) for t in (q, k, v)]
        windows = self.windows(H, W)
        out = qkv.new_empty(B, H, W, C)
        for i, window in enumerate(windows):
            stripe_attention(*(t[i] for t in branches), window, self.scale, self.backend,
                             out=out[..., i * c:(i + 1) * c].view(B, H, W, heads, d))
        mask = _lepe_kernel_mask(windows, H, W, c)
        if mask is not None:  # one conv for every branch
            w = self.lepe.weight * mask.to(self.lepe.weight)
            out += F.conv2d(v.permute(0, 3, 1, 2), w, self.lepe.bias, padding=1, groups=C).permute(0, 2, 3, 1)
        else:
            for i, window in enumerate(windows):
                part = slice(i * c, (i + 1) * c)
                bias = None if self.lepe.bias is None else self.lepe.bias[part]
                out[..., part] += windowed_dwconv(v[..., part], self.lepe.weight[part], bias, window)
        return out

    def _mix_scripted(self, qkv: torch.Tensor) -> torch.Tensor:
        """:meth:`mix` under ``torch.jit.script``: each branch's windows through ``na2d``'s reference with the
        front door's ``pad=True`` (:func:`~visionzoo.ops.neighborhood.reference.na2d_padded`), LePE as the
        per-window depthwise conv written as masked taps (the form :func:`windowed_dwconv` takes for symbolic
        sizes)."""
        B, H, W, C3 = qkv.shape
        C = C3 // 3
        c, heads, d = C // self.branches, self.num_heads // self.branches, self.head_dim
        q, k, v = qkv.reshape(B, H, W, 3, C).unbind(3)
        sw = self.split_size
        windows = [(H, W)] if self.global_attn else [(H, min(sw, W)), (min(sw, H), W)]
        outs: list[torch.Tensor] = []
        for i, window in enumerate(windows):
            qi, ki, vi = (t[..., i * c:(i + 1) * c].reshape(B, H, W, heads, d) for t in (q, k, v))
            wh, ww = window
            out = na2d_padded(qi, ki, vi, [wh, ww], [1, 1], [wh, ww], None, self.scale).reshape(B, H, W, c)
            bias = self.lepe.bias
            if bias is not None:
                bias = bias[i * c:(i + 1) * c]
            outs.append(out + _windowed_dwconv_taps(v[..., i * c:(i + 1) * c], self.lepe.weight[i * c:(i + 1) * c],
                                                    bias, window))
        return torch.cat(outs, -1)

    def extra_repr(self) -> str:
        kind = "global" if self.global_attn else f"stripes of {self.split_size}"
        return f"dim={self.dim}, num_heads={self.num_heads}, {kind}, backend={self.backend or 'auto'}"


@register_notrace_module
class FocusedLinearAttnLePE(FocusedLinearAttn):
    """FLatten-CSWin's global attention: :class:`FocusedLinearAttn` (no spatial reduction) plus LePE, a depthwise
    3x3 conv of ``v`` over the whole map (official ``get_v``), added before ``proj``. Arguments: the parent's."""

    def __init__(self, dim: int, num_heads: int, *, map_size, focusing_factor: float = 3, kernel_size: int = 5,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0, backend: str | None = None,
                 device=None, dtype=None):
        super().__init__(dim, num_heads, map_size=map_size, focusing_factor=focusing_factor, kernel_size=kernel_size,
                         qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, backend=backend, device=device,
                         dtype=dtype)
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, device=device, dtype=dtype)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int],
               kv_size: tuple[int, int]) -> torch.Tensor:
        out = self.focused(q, k, v, size, kv_size)
        B, H, W, C = out.shape
        return out + self.lepe(v.reshape(B, H, W, C).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
