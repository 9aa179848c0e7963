"""FocusedLinearAttn against a plain transcription of the official FLatten forward (May-2024 form)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from visionzoo.blocks import create_token_mixer
from visionzoo.blocks.focused_linear_attn import FocusedLinearAttn


def official_forward(m: FocusedLinearAttn, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The official ``FocusedLinearAttention.forward`` on tokens ``[B, N, C]`` written out in plain
    PyTorch, with the module's parameters and the (already resampled) positional encoding ``pos``."""
    B, H, W, C = x.shape
    N, heads = H * W, m.num_heads
    x = x.reshape(B, N, C)
    if m.sr_ratio == 1:
        q, k, v = F.linear(x, m.qkv.weight, m.qkv.bias).reshape(B, N, 3, C).permute(2, 0, 1, 3)
    else:
        q = m.q(x)
        xs = m.sr(x.permute(0, 2, 1).reshape(B, C, H, W)).reshape(B, C, -1).permute(0, 2, 1)
        k, v = m.kv(m.norm(xs)).reshape(B, -1, 2, C).permute(2, 0, 1, 3)
    n = k.shape[1]
    k = k + pos
    s = F.softplus(m.scale)
    q, k = (F.relu(q) + 1e-6) / s, (F.relu(k) + 1e-6) / s
    q_norm, k_norm = q.norm(dim=-1, keepdim=True), k.norm(dim=-1, keepdim=True)
    q, k = q ** m.focusing_factor, k ** m.focusing_factor
    q = q / q.norm(dim=-1, keepdim=True) * q_norm
    k = k / k.norm(dim=-1, keepdim=True) * k_norm
    q = q.reshape(B, N, heads, -1).permute(0, 2, 1, 3)
    k = k.reshape(B, n, heads, -1).permute(0, 2, 1, 3)
    v = v.reshape(B, n, heads, -1).permute(0, 2, 1, 3)
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    kv = (k.transpose(-2, -1) * n ** -0.5) @ (v * n ** -0.5)
    out = q @ kv * z
    if m.sr_ratio > 1:
        v = F.interpolate(v.transpose(-2, -1).reshape(B * heads, -1, n), size=N, mode="linear")
        v = v.reshape(B, heads, -1, N).transpose(-2, -1)
    out = out.transpose(1, 2).reshape(B, N, C)
    v = v.reshape(B * heads, H, W, -1).permute(0, 3, 1, 2)
    out = out + m.dwc(v).reshape(B, C, N).permute(0, 2, 1)
    return m.proj(out).reshape(B, H, W, C)


def _block(dim=32, heads=2, map_size=(6, 5), sr=1, p=3, seed=0, **kw):
    torch.manual_seed(seed)
    m = FocusedLinearAttn(dim, heads, map_size=map_size, focusing_factor=p, sr_ratio=sr, dtype=torch.float64, **kw)
    with torch.no_grad():  # non-trivial scale / positional encoding (the official init is zeros)
        m.scale.normal_(0, 0.5)
        m.positional_encoding.normal_(0, 0.5)
    return m


@pytest.mark.parametrize("sr,map_size,p,kernel", [(1, (6, 5), 3, 5), (2, (8, 6), 3, 5), (1, (7, 7), 2.5, 3),
                                                  (2, (7, 9), 4, 5)])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_matches_official_at_build_size(sr, map_size, p, kernel, backend):
    m = _block(map_size=map_size, sr=sr, p=p, kernel_size=kernel, backend=backend)
    x = torch.randn(2, *map_size, 32, dtype=torch.float64)
    want = official_forward(m, x, m.positional_encoding)
    torch.testing.assert_close(m(x), want, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("sr,map_size,runtime", [(1, (6, 5), (9, 4)), (2, (8, 8), (10, 14)), (1, (4, 4), (4, 6))])
def test_other_map_interpolates_positional_encoding(sr, map_size, runtime):
    m = _block(map_size=map_size, sr=sr)
    x = torch.randn(2, *runtime, 32, dtype=torch.float64)
    hk, wk = runtime[0] // sr, runtime[1] // sr
    h, w = map_size[0] // sr, map_size[1] // sr
    grid = m.positional_encoding.reshape(1, h, w, 32).permute(0, 3, 1, 2)
    pos = F.interpolate(grid, size=(hk, wk), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(m(x), official_forward(m, x, pos), atol=1e-10, rtol=1e-9)


def test_keys_and_shapes():
    m = FocusedLinearAttn(64, 2, map_size=(14, 14))
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"qkv.weight": (192, 64), "qkv.bias": (192,), "proj.weight": (64, 64), "proj.bias": (64,),
                      "dwc.weight": (32, 1, 5, 5), "dwc.bias": (32,), "scale": (1, 1, 64),
                      "positional_encoding": (1, 196, 64)}
    m = FocusedLinearAttn(64, 1, map_size=(56, 56), sr_ratio=8, kernel_size=3)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes["positional_encoding"] == (1, 49, 64) and shapes["dwc.weight"] == (64, 1, 3, 3)
    assert shapes["sr.weight"] == (64, 64, 8, 8) and shapes["kv.weight"] == (128, 64) and "qkv.weight" not in shapes
    assert m.norm.eps == 1e-5


def test_backward_reaches_every_parameter():
    m = _block(sr=2, map_size=(8, 6))
    m(torch.randn(2, 8, 6, 32, dtype=torch.float64)).square().sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_token_mixer_table():
    m = create_token_mixer("focused_linear", 32, 2, map_size=(7, 7), kernel_size=3, proj_drop=0.1)
    assert isinstance(m, FocusedLinearAttn) and m.kernel_size == 3 and m.proj_drop.p == 0.1


@pytest.mark.parametrize("kwargs,match", [
    (dict(dim=30, num_heads=4), "divisible"),
    (dict(kernel_size=4), "kernel_size"),
    (dict(sr_ratio=0), "sr_ratio"),
    (dict(map_size=(0, 3)), "map_size"),
    (dict(attn_drop=0.1), "attn_drop"),
    (dict(focusing_factor=0), "focusing_factor"),
])
def test_bad_arguments(kwargs, match):
    args = dict(dim=32, num_heads=2, map_size=(7, 7)) | kwargs
    with pytest.raises(ValueError, match=match):
        FocusedLinearAttn(args.pop("dim"), args.pop("num_heads"), **args)


def test_map_smaller_than_sr_ratio_raises():
    m = FocusedLinearAttn(32, 2, map_size=(8, 8), sr_ratio=4)
    with pytest.raises(ValueError, match="smaller than sr_ratio"):
        m(torch.randn(1, 3, 8, 32))


@pytest.mark.parametrize("sr", [1, 2])
def test_triton_backend_matches_reference(sr):
    """The block on the Triton kernels (interpreted without CUDA) against the reference backend, fp32."""
    pytest.importorskip("triton", reason="Triton is not importable, so the triton backend cannot run")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    m = _block(map_size=(8, 6), sr=sr, backend="reference").float().to(device)
    x = torch.randn(2, 8, 6, 32, device=device)
    want = m(x)
    m.backend = "triton"
    torch.testing.assert_close(m(x), want, atol=1e-4, rtol=1e-4)
