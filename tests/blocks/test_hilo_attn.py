"""HiLo attention against a per-window / per-token oracle written from the paper's definition: divisible
(square and non-square) maps, where it is the official computation, and maps that the window does not
divide (padding masked out of Hi-Fi, partial windows averaged over their real pixels in Lo-Fi); the alpha
and s = 1 head splits and their keys."""
import math

import pytest
import torch

from visionzoo.blocks import create_token_mixer
from visionzoo.blocks.hilo_attn import HiLoAttn


def _attend(q, k, v, scale):
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v


def _oracle(m: HiLoAttn, x: torch.Tensor) -> torch.Tensor:
    """x ``[B, H, W, C]``; every window of side s is clipped to the map, nothing is padded."""
    B, H, W, _ = x.shape
    s, hd, outs = m.ws, m.head_dim, []
    cells = [(slice(i, min(i + s, H)), slice(j, min(j + s, W))) for i in range(0, H, s) for j in range(0, W, s)]
    if m.h_heads:
        qkv = m.h_qkv(x).view(B, H, W, 3, m.h_heads, hd)
        hi = torch.zeros(B, H, W, m.h_heads, hd)
        for rows, cols in cells:
            win = qkv[:, rows, cols]  # [B, h, w, 3, heads, hd]
            h, w = win.shape[1:3]
            q, k, v = win.reshape(B, h * w, 3, m.h_heads, hd).permute(2, 0, 3, 1, 4)
            hi[:, rows, cols] = _attend(q, k, v, m.scale).permute(0, 2, 1, 3).reshape(B, h, w, m.h_heads, hd)
        outs.append(m.h_proj(hi.reshape(B, H, W, -1)))
    if m.l_heads:
        pooled = torch.stack([x[:, r, c].mean(dim=(1, 2)) for r, c in cells], 1) if s > 1 else x.reshape(B, H * W, -1)
        q = m.l_q(x).view(B, H * W, m.l_heads, hd).transpose(1, 2)
        k, v = m.l_kv(pooled).view(B, -1, 2, m.l_heads, hd).permute(2, 0, 3, 1, 4)
        outs.append(m.l_proj(_attend(q, k, v, m.scale).transpose(1, 2).reshape(B, H, W, -1)))
    return torch.cat(outs, -1)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("size", [(8, 8), (6, 10), (7, 7), (5, 9), (1, 3)])
@pytest.mark.parametrize("backend", ["reference", None])
def test_matches_oracle(alpha, size, backend):
    torch.manual_seed(0)
    m = HiLoAttn(32, 4, window_size=2, alpha=alpha, backend=backend)
    x = torch.randn(2, *size, 32)
    with torch.no_grad():
        ref = _oracle(m, x)
        torch.testing.assert_close(m(x), ref, atol=2e-5, rtol=2e-5)
        m.eval()  # the fused-GEMM inference path
        torch.testing.assert_close(m(x), ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("size", [(9, 9), (12, 7)])
def test_window_three(size):
    torch.manual_seed(1)
    m = HiLoAttn(24, 3, window_size=3, alpha=0.34)  # int(3 * 0.34) = 1 Lo-Fi head, 2 Hi-Fi
    assert (m.l_heads, m.h_heads) == (1, 2)
    x = torch.randn(1, *size, 24)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _oracle(m, x), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.9])
def test_window_one_is_plain_msa(alpha):
    """s = 1: every head is Lo-Fi without pooling (the official rule, whatever alpha); keys l_q, l_kv, l_proj."""
    torch.manual_seed(0)
    m = HiLoAttn(32, 4, window_size=1, alpha=alpha)
    assert (m.l_heads, m.h_heads) == (4, 0) and sorted(m.state_dict()) == [
        "l_kv.bias", "l_kv.weight", "l_proj.bias", "l_proj.weight", "l_q.bias", "l_q.weight"]
    x = torch.randn(2, 5, 7, 32)
    q = m.l_q(x).view(2, 35, 4, 8).transpose(1, 2)
    k, v = m.l_kv(x).view(2, 35, 2, 4, 8).permute(2, 0, 3, 1, 4)
    ref = m.l_proj(_attend(q, k, v, 8 ** -0.5).transpose(1, 2).reshape(2, 5, 7, 32))
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("alpha,keys", [(0.0, {"h_qkv", "h_proj"}), (1.0, {"l_q", "l_kv", "l_proj"}),
                                        (0.5, {"h_qkv", "h_proj", "l_q", "l_kv", "l_proj"})])
def test_alpha_edge_cases_build_only_their_paths(alpha, keys):
    m = HiLoAttn(48, 6, window_size=2, alpha=alpha)
    assert {k.split(".")[0] for k in m.state_dict()} == keys
    assert m.l_heads == math.floor(6 * alpha) and m.h_heads + m.l_heads == 6


def test_padding_never_leaks():
    """A token's output depends on the real map only: changing what lies beyond a non-divisible map's edge
    (here by cropping a larger map) leaves the shared windows' outputs unchanged for Hi-Fi."""
    torch.manual_seed(0)
    m = HiLoAttn(16, 2, window_size=2, alpha=0.0)
    x = torch.randn(1, 6, 6, 16)
    with torch.no_grad():
        full, cropped = m(x), m(x[:, :5, :5])
    torch.testing.assert_close(cropped[:, :4, :4], full[:, :4, :4])


@pytest.mark.parametrize("kwargs,match", [(dict(alpha=1.5), "alpha"), (dict(window_size=0), "window_size")])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HiLoAttn(32, 4, **kwargs)
    with pytest.raises(ValueError, match="divisible"):
        HiLoAttn(30, 4)


def test_token_mixer_table_row():
    m = create_token_mixer("hilo", 32, 4, window_size=2, alpha=0.5, backend="reference", proj_drop=0.1)
    assert isinstance(m, HiLoAttn) and m.backend == "reference" and m.proj_drop.p == 0.1
    with pytest.raises(ValueError, match="attn_drop"):
        create_token_mixer("hilo", 32, 4, attn_drop=0.1)
