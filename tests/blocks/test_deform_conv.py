"""DeformConv2dPack (LITv2's DTM) against a bilinear-sampling oracle written from the DCNv1 definition:
offsets (dy, dx) interleaved per kernel tap i * kw + j, zeros outside the map, bias added."""
import pytest
import torch
import torch.nn.functional as F

from visionzoo.blocks.deform_conv import DeformConv2dPack


def _bilinear(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """img ``[C, H, W]`` at real (y, x), zero outside."""
    C, H, W = img.shape
    y0, x0 = int(torch.floor(torch.tensor(y))), int(torch.floor(torch.tensor(x)))
    out = torch.zeros(C, dtype=img.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < H and 0 <= xx < W:
                out += wy * wx * img[:, yy, xx]
    return out


def _oracle(m: DeformConv2dPack, x: torch.Tensor) -> torch.Tensor:
    k, s, p = m.weight.shape[-1], m.stride, m.padding
    off = m.conv_offset(x)
    B, _, Ho, Wo = off.shape
    out = torch.zeros(B, m.weight.shape[0], Ho, Wo, dtype=x.dtype)
    for b in range(B):
        for oy in range(Ho):
            for ox in range(Wo):
                acc = m.bias.clone()
                for i in range(k):
                    for j in range(k):
                        t = i * k + j
                        dy, dx = off[b, 2 * t, oy, ox].item(), off[b, 2 * t + 1, oy, ox].item()
                        v = _bilinear(x[b], oy * s - p + i + dy, ox * s - p + j + dx)
                        acc = acc + m.weight[:, :, i, j] @ v
                out[b, :, oy, ox] = acc
    return out


def test_zero_offsets_is_a_plain_conv():
    m = DeformConv2dPack(4, 6, 2, 2)
    x = torch.randn(2, 4, 6, 8)
    torch.testing.assert_close(m(x), F.conv2d(x, m.weight, m.bias, stride=2))


@pytest.mark.parametrize("shape,k,s,p", [((1, 3, 6, 8), 2, 2, 0), ((2, 2, 5, 4), 3, 1, 1)])
def test_matches_bilinear_oracle(shape, k, s, p):
    torch.manual_seed(0)
    m = DeformConv2dPack(shape[1], 5, k, s, p).double()
    with torch.no_grad():
        m.conv_offset.weight.normal_(0, 0.3)
        m.conv_offset.bias.normal_(0, 0.8)  # offsets beyond a pixel, some outside the map
        m.bias.normal_()
    x = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _oracle(m, x))


def test_half_precision_on_cpu():
    m = DeformConv2dPack(4, 6, 2, 2).bfloat16()
    assert m(torch.randn(1, 4, 6, 6, dtype=torch.bfloat16)).dtype == torch.bfloat16
