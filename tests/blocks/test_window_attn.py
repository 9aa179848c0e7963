"""SwinWindowAttn (Swin W-MSA / SW-MSA on na2d) against timm's SwinTransformerBlock attention, with the
same weights: shifted and unshifted windows, the official no-shift rule on small maps, padded maps."""
import pytest
import torch

from visionzoo.blocks.window_attn import SwinWindowAttn

timm_swin = pytest.importorskip("timm.models.swin_transformer", reason="timm is the oracle")


def _pair(size, shift: bool, P: int = 4, dim: int = 16, heads: int = 2):
    torch.manual_seed(0)
    ours = SwinWindowAttn(dim, heads, window_size=P, shift=shift, backend="reference").eval()
    with torch.no_grad():
        ours.relative_position_bias_table.normal_(0, 1.0)
    blk = timm_swin.SwinTransformerBlock(dim, size, num_heads=heads, window_size=P,
                                         shift_size=P // 2 if shift else 0).eval()
    blk.attn.load_state_dict(ours.state_dict(), strict=True)  # the same keys (timm's index is not persistent)
    return ours, blk


def _timm_attn(blk, x):
    """timm's block with its norm and MLP removed: the shifted-window attention branch alone."""
    return blk._attn(x)


@pytest.mark.parametrize("size,shift", [((8, 8), False), ((8, 8), True), ((12, 8), True), ((4, 4), True)])
def test_matches_timm_swin_block(size, shift):
    ours, blk = _pair(size, shift)
    x = torch.randn(2, *size, 16)
    # timm's rule at build time == ours at run time: no shift when min(H, W) <= P (the 4 x 4 map)
    assert (blk.shift_size[0] > 0) == (ours.shift_for(*size) > 0)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), _timm_attn(blk, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(9, 11), (3, 5), (1, 1)])
def test_any_map_size(size):
    ours, _ = _pair((8, 8), True)
    x = torch.randn(2, *size, 16, requires_grad=True)
    out = ours(x)
    out.sum().backward()
    assert out.shape == x.shape and torch.isfinite(out).all() and torch.isfinite(x.grad).all()


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        SwinWindowAttn(10, 3)
    with pytest.raises(ValueError, match="window_size"):
        SwinWindowAttn(16, 2, window_size=0)
    with pytest.raises(ValueError, match="attn_drop"):
        SwinWindowAttn(16, 2, attn_drop=0.1)
