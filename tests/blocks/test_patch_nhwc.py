"""Swin-layout patch embed and patch merging (blocks/nhwc.py): timm's layers with padding written so a
symbolic size mentions the input size once. Outputs equal timm's on every size residue; the sizes of a
stem + three merges exported with dynamic H, W stay ``ceil(H / 32)`` (timm's ``n % m`` padding doubled
the expression per stage: DiNAT-S's ``dynamic=True`` compile spent over 23 min in sympy); both script."""
import pytest
import torch
from timm.layers import PatchEmbed
from timm.models.swin_transformer import PatchMerging

from visionzoo.blocks.nhwc import LayerNorm, PatchEmbedNhwc, PatchMergingNhwc


def _pair(norm: bool):
    torch.manual_seed(0)
    ours = PatchEmbedNhwc(4, 3, 8, norm_layer=LayerNorm if norm else None)
    ref = PatchEmbed(None, 4, 3, 8, norm_layer=LayerNorm if norm else None, flatten=False, output_fmt="NHWC",
                     strict_img_size=False, dynamic_img_pad=True)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize("norm", [True, False])
def test_patch_embed_equals_timm_dynamic_pad(norm):
    ours, ref = _pair(norm)
    for h, w in [(16, 16), (17, 18), (19, 13), (1, 3), (4, 7)]:
        x = torch.randn(2, 3, h, w)
        got = ours(x)
        assert got.shape == (2, -(-h // 4), -(-w // 4), 8)
        torch.testing.assert_close(got, ref(x), rtol=0, atol=0, msg=f"{h}x{w}")


def test_patch_merging_equals_timm_and_keeps_its_keys():
    torch.manual_seed(0)
    ours, ref = PatchMergingNhwc(6, 12, norm_layer=LayerNorm), PatchMerging(6, 12, norm_layer=LayerNorm)
    ref.load_state_dict(ours.state_dict())  # strict: the same keys and shapes
    for h, w in [(8, 8), (7, 9), (1, 1), (2, 5)]:
        x = torch.randn(2, h, w, 6)
        got = ours(x)
        assert got.shape == (2, -(-h // 2), -(-w // 2), 12)
        torch.testing.assert_close(got, ref(x), rtol=0, atol=0, msg=f"{h}x{w}")


def test_symbolic_sizes_stay_flat():
    """Stem (patch 4) + three merges exported with dynamic H, W: the last map's height is one floor
    division of H (``ceil(H / 32)``), and the program runs at other sizes."""
    ours, _ = _pair(True)
    net = torch.nn.Sequential(ours, *(PatchMergingNhwc(8 * 2 ** i, 16 * 2 ** i, norm_layer=LayerNorm)
                                      for i in range(3))).eval()
    dyn = torch.export.Dim.DYNAMIC
    ep = torch.export.export(net, (torch.randn(2, 3, 64, 64),), dynamic_shapes=({2: dyn, 3: dyn},))
    out = [n for n in ep.graph.nodes if n.op == "output"][0].args[0][0].meta["val"]
    height = out.shape[1].node.expr
    (symbol,) = height.free_symbols
    assert str(height).count(str(symbol)) == 1, height
    for h, w in [(64, 64), (33, 95), (97, 40)]:  # every map >= 2: export specialises size-1 maps
        assert int(height.subs(symbol, h)) == -(-h // 32)
        x = torch.randn(2, 3, h, w)
        torch.testing.assert_close(ep.module()(x), net(x), rtol=1e-6, atol=1e-6, msg=f"{h}x{w}")


def test_both_script():
    embed, _ = _pair(True)
    merge = PatchMergingNhwc(8, 16, norm_layer=LayerNorm)
    net = torch.nn.Sequential(embed, merge).eval()
    scripted = torch.jit.script(net)
    for h, w in [(16, 16), (21, 30)]:
        x = torch.randn(2, 3, h, w)
        torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=0, msg=f"{h}x{w}")
