"""Swin's (shifted) window attention as one ``na2d(q, k, v, P, stride=P, shift=s)`` call, against timm's
``SwinTransformerBlock``: forward and the gradients of the input and of every weight, on every backend.

The block is timm's own (eval, no dropout); our side runs its norm1 / qkv / proj / MLP submodules around
``na2d`` with the bias table converted by ``swin_rpb_to_na``, so what is tested is the attention geometry
(cells, the region mask of the cyclic shift) and the bias indexing. Maps that are no multiple of the window
are zero-padded to whole windows before the block (what the official detection backbone does: pad, then
roll; timm rolls the unpadded map and mixes tokens across the border) and both sides see that padded map
as real tokens; both outputs are cropped. 56 x 56 is the 224 px model's first stage, 50 x 58 the 200 x 232
one's; 61 x 47 is a raw odd map.

Tolerances: in float64 (reference and cpu backends) everything agrees to 1e-8, which pins the geometry
exactly. In float32 (every backend, Triton under ``TRITON_INTERPRET=1``) the output and the input gradient
agree to 1e-5; the weight gradients are sums over thousands of tokens whose fp32 rounding depends on the
summation order (timm's own fp32 run is up to 5e-5 off its fp64 run at magnitudes ~100), so they are held
to 1e-5 of each tensor's largest entry.
"""
import functools

import pytest
import torch
import torch.nn.functional as F

from visionzoo.ops.neighborhood import na2d, swin_rpb_to_na

timm_swin = pytest.importorskip("timm.models.swin_transformer", reason="timm is the oracle")

P = 7
SIZES = [(56, 56), (50, 58), (61, 47)]
BACKENDS = ["reference", "cpu", "triton"]


def _block(size, shift: int, dtype=torch.float32) -> torch.nn.Module:
    hp, wp = (-(-n // P) * P for n in size)
    torch.manual_seed(0)
    blk = timm_swin.SwinTransformerBlock(32, (hp, wp), num_heads=2, window_size=P, shift_size=shift).eval()
    with torch.no_grad():  # a bias large enough that a misplaced entry shows
        blk.attn.relative_position_bias_table.normal_(0, 1.0)
    assert blk.shift_size == (shift, shift) and blk.window_size == (P, P)
    return blk.to(dtype)


def _ours(blk, x: torch.Tensor, backend: str) -> torch.Tensor:
    """timm's block with its window attention replaced by one na2d call."""
    B, H, W, C = x.shape
    attn = blk.attn
    q, k, v = attn.qkv(blk.norm1(x)).view(B, H, W, 3, attn.num_heads, -1).unbind(3)
    rpb = swin_rpb_to_na(attn.relative_position_bias_table, P)
    out = na2d(q, k, v, P, stride=P, shift=blk.shift_size, rpb=rpb, scale=attn.scale, backend=backend)
    x = x + attn.proj(out.reshape(B, H, W, C))
    return x + blk.mlp(blk.norm2(x))


def _run(fn, blk, x_raw, dout):
    """Output (cropped to the raw map) and the gradients of the raw input and of every weight."""
    blk.zero_grad(set_to_none=True)
    x_raw = x_raw.detach().requires_grad_(True)
    H, W = x_raw.shape[1:3]
    hp, wp = (-(-n // P) * P for n in (H, W))
    out = fn(F.pad(x_raw, (0, 0, 0, wp - W, 0, hp - H)))[:, :H, :W]
    out.backward(dout)
    grads = {"x": x_raw.grad}
    grads.update({n: p.grad for n, p in blk.named_parameters()})
    return out.detach(), grads


@functools.lru_cache(maxsize=None)
def _timm(size, shift, dtype):
    blk = _block(size, shift, dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, *size, 32, generator=g, dtype=dtype)
    dout = torch.randn(1, *size, 32, generator=g, dtype=dtype)
    return x, dout, _run(blk, blk, x, dout)


def _compare(size, shift, backend, dtype, tol, weight_tol):
    x, dout, (want, want_grads) = _timm(size, shift, dtype)
    blk = _block(size, shift, dtype)
    got, grads = _run(functools.partial(_ours, blk, backend=backend), blk, x, dout)
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    assert set(grads) == set(want_grads) and all(g is not None for g in grads.values())
    for name, g in grads.items():
        atol = tol if name == "x" else weight_tol * float(want_grads[name].abs().max())
        torch.testing.assert_close(g, want_grads[name], atol=atol, rtol=tol, msg=lambda m: f"d {name}: {m}")


def _cases():
    """Every size x shift x backend; the interpreted Triton runs take ~50 s each, so the default tier keeps
    the hardest one (the raw odd map, shifted) and the others are ``extended``."""
    for size in SIZES:
        for shift in (0, 3):
            for backend in BACKENDS:
                slow = backend == "triton" and (size, shift) != (SIZES[-1], 3)
                yield pytest.param(size, shift, backend, id="%dx%d-%s-%s" % (*size, ("W-MSA", "SW-MSA")[shift > 0],
                                                                             backend),
                                   marks=[pytest.mark.extended] if slow else [])


@pytest.mark.parametrize("size, shift, backend", list(_cases()))
def test_equals_timm_swin_block(size, shift, backend):
    if backend == "triton":
        pytest.importorskip("triton", reason="Triton is not importable")
    _compare(size, shift, backend, torch.float32, 1e-5, 1e-5)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("shift", [0, 3], ids=["W-MSA", "SW-MSA"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "%dx%d" % s)
def test_equals_timm_swin_block_fp64(size, shift, backend):
    _compare(size, shift, backend, torch.float64, 1e-8, 1e-12)
