"""TF 'SAME' padding (blocks/same_pad.py): the symbolic-size formulation (static pad, then a cut) equals
timm's ``pad_same`` for every size residue, kernel, stride and dilation, and the conv / pool modules
export with dynamic H, W and run at other sizes."""
import pytest
import torch
import torch.nn.functional as F
from timm.layers import pad_same as timm_pad_same
from timm.layers.conv2d_same import Conv2dSame as TimmConv2dSame
from timm.layers.pool2d_same import AvgPool2dSame as TimmAvgPool2dSame

from visionzoo.blocks.same_pad import AvgPool2dSame, Conv2dSame, _pad_same_symbolic


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("kernel,dilation", [(1, 1), (2, 1), (3, 1), (3, 2), (5, 1)])
def test_symbolic_formulation_equals_timm(kernel, dilation, stride):
    """The cut of the over-padded map feeds the op exactly the pixels timm's padding does (conv outputs
    equal, output sizes ceil(n / s)), on sizes 1..13 x 1..13 (every residue, maps smaller than the kernel)."""
    w = torch.randn(2, 2, kernel, kernel)
    for h in range(1, 14):
        for wd in (1, 2, 5, 8, 13):
            x = torch.randn(1, 2, h, wd)
            k, s, d = [kernel] * 2, [stride] * 2, [dilation] * 2
            want = F.conv2d(timm_pad_same(x, k, s, d), w, None, stride, 0, dilation)
            got = F.conv2d(_pad_same_symbolic(x, k, s, d, 0.0), w, None, stride, 0, dilation)
            assert got.shape[-2:] == (-(-h // stride), -(-wd // stride))
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"{h}x{wd}")


def test_modules_match_timm_and_keep_its_keys():
    conv, ref = Conv2dSame(3, 4, 3, 2, bias=True), TimmConv2dSame(3, 4, 3, 2, bias=True)
    ref.load_state_dict(conv.state_dict())
    pool, ref_pool = AvgPool2dSame(2), TimmAvgPool2dSame(2, 2)
    for hw in [(7, 9), (8, 8), (1, 2)]:
        x = torch.randn(2, 3, *hw)
        torch.testing.assert_close(conv(x), ref(x), rtol=0, atol=0)
        torch.testing.assert_close(pool(x), ref_pool(x), rtol=0, atol=0)


@pytest.mark.parametrize("module", ["conv", "pool"])
def test_exports_with_dynamic_size(module):
    """Exported at 16 x 16 with dynamic H, W, the program runs at odd, even and mixed sizes and equals eager."""
    m = Conv2dSame(3, 4, 3, 2, bias=True) if module == "conv" else AvgPool2dSame(2)
    net = torch.nn.Sequential(m, Conv2dSame(4 if module == "conv" else 3, 4, 3, 2)).eval()
    dyn = torch.export.Dim.DYNAMIC
    ep = torch.export.export(net, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: dyn, 2: dyn, 3: dyn},))
    for hw in [(16, 16), (9, 13), (12, 7), (5, 5)]:
        x = torch.randn(3, 3, *hw)
        torch.testing.assert_close(ep.module()(x), net(x), rtol=1e-6, atol=1e-6, msg=str(hw))
