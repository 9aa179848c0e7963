"""HaloNet: timm-weight parity, parameter counts (official and the paper's), any input size, the
paper's r_v (value ratio) block, strided attention on odd maps, backends."""

import pytest
import timm
import torch

import visionzoo
from visionzoo.models._registry import MODELS

from ._any_size import check_train_and_eval
from ..fixtures import official_params
from .test_maxvit import _perturb

NAMES = [n for n in visionzoo.list_models() if MODELS[n].family == "halonet"]
TIMM = ["halonet26t", "sehalonet33ts", "halonet50ts", "eca_halonext26ts", "halonet_h1"]
SMALL = dict(depths=(1, 1, 2, 1), widths=(16, 32, 64, 64), halo_blocks=((0,), (0,), (0, 1), (0,)),
             num_heads=(2, 2, 2, 2), stem_width=16, block_size=4, halo_size=1)


def _perturbed_timm(name):
    torch.manual_seed(0)
    model = _perturb(timm.create_model(name)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # BN names in byobnet are 'bn', not 'norm': redraw them too (gains < 1 keep
        for mod in model.modules():  # activations O(1) through the residual stack)
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(0.1 * torch.randn(mod.running_mean.shape, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(mod.running_var.shape, generator=g))
                mod.weight.copy_(0.2 + 0.4 * torch.rand(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
    return model


@pytest.mark.parametrize("name", TIMM)
def test_timm_weights_give_timm_outputs(tmp_path, name):
    theirs = _perturbed_timm(name)
    torch.save(theirs.state_dict(), tmp_path / "timm.pth")
    ours = visionzoo.create_model(name, checkpoint_path=tmp_path / "timm.pth").eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=1e-4)
        # timm taps stem, stages 0-2 and its final conv; ours tap the four stages
        want = theirs.forward_intermediates(x, intermediates_only=True)[1:]
        got = ours.forward_intermediates(x, intermediates_only=True)
        n = 4 if not ours.cfg.num_features else 3
        for a, b in zip(got[:n], want[:n], strict=True):
            assert b.abs().max() < 100  # O(1) activations, so 1e-4 is a meaningful bound
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_param_counts_equal_official_and_paper():
    counts = official_params()
    for name in NAMES:
        meta = MODELS[name].meta
        n = visionzoo.count_params(visionzoo.create_model(name, device="meta"))
        if meta["official_params_key"]:
            assert n == counts[meta["official_params_key"]]["params"], name
        else:  # the paper reports 0.1 M precision
            assert round(n / 1e6, 1) == meta["paper_params_m"], (name, n)


def test_any_input_size_where_timm_asserts():
    """224 fails in timm's halonet26t (stage maps 14 and 7 are not multiples of the block 8)."""
    model = visionzoo.create_model("halonet26t", **{k: v for k, v in SMALL.items() if k != "block_size"}, block_size=8)
    check_train_and_eval(model, [(224, 224), (97, 131), (40, 40)], batch=2)
    with pytest.raises(Exception):
        timm.create_model("halonet26t").eval()(torch.randn(1, 3, 224, 224))


@pytest.mark.parametrize("stride", [1, 2])
def test_odd_maps_equal_a_zero_extended_map(stride):
    """On a map that is not whole blocks the layer equals the same layer on the map zero-extended to
    whole blocks, cropped: padding behaves exactly like timm's zero border (q/kv have no bias)."""
    from visionzoo.blocks.halo_attn import HaloAttn2d
    layer = HaloAttn2d(16, 16, stride=stride, num_heads=2, block_size=4, halo_size=1).eval()
    x = torch.randn(1, 16, 13, 10)
    with torch.no_grad():
        out = layer(x)
        full = layer(torch.nn.functional.pad(x, (0, 2, 0, 3)))
    assert out.shape[-2:] == (-(-13 // stride), -(-10 // stride))
    torch.testing.assert_close(out, full[..., :out.shape[-2], :out.shape[-1]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["halonet_h5", "halonet_h0"])
def test_h_series_blocks_run_any_size(name):
    model = visionzoo.create_model(name, **SMALL)
    check_train_and_eval(model, [(64, 64), (45, 70)])
    if MODELS[name].cfg.value_ratio != 1.0:  # values r_v times wider than queries/keys
        block = model.stages[0][0]
        attn, mid = block.self_attn, block.conv1_1x1.conv.out_channels
        assert attn.num_heads * attn.dim_head_qk == mid  # queries/keys keep the bottleneck width
        assert attn.num_heads * attn.dim_head_v == block.conv3_1x1.conv.in_channels >= 2.5 * mid


def test_backends_agree():
    model = visionzoo.create_model("halonet26t", **{k: v for k, v in SMALL.items() if k != "halo_blocks"},
                                   halo_blocks=((0,), (), (1,), (0,))).eval()
    x = torch.randn(1, 3, 70, 54)
    with torch.no_grad():
        with visionzoo.use_backend("reference"):
            ref = model(x)
        with visionzoo.use_backend("cpu"):
            cpu = model(x)
    torch.testing.assert_close(cpu, ref, atol=1e-5, rtol=1e-5)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="halo_blocks"):
        visionzoo.create_model("halonet26t", halo_blocks=((), (), (5,), (0, 1)), device="meta")
    with pytest.raises(ValueError, match="one entry per stage"):
        visionzoo.create_model("halonet26t", num_heads=(8, 8), device="meta")


@pytest.mark.parametrize("block,avg_down", [(7, False), (8, True)])
def test_pooled_downsampling_variant(block, avg_down):
    """An odd block (or avg_down) cannot subsample queries per block: the layer attends at stride 1
    and average-pools, like timm's HaloAttn; odd maps pool with ceil so the shortcut's size matches."""
    from timm.layers.halo_attn import HaloAttn

    from visionzoo.blocks.halo_attn import HaloAttn2d
    ours = HaloAttn2d(16, 16, stride=2, num_heads=2, block_size=block, halo_size=2, avg_down=avg_down).eval()
    assert isinstance(ours.pool, torch.nn.AvgPool2d) and ours.block_stride == 1
    theirs = HaloAttn(16, 16, stride=2, num_heads=2, block_size=block, halo_size=2, avg_down=avg_down).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 16, 2 * block, 2 * block)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    odd = torch.randn(1, 16, 2 * block + 1, 9, requires_grad=True)
    out = ours.train()(odd)
    assert out.shape[-2:] == (block + 1, 5)
    out.sum().backward()
    assert torch.isfinite(odd.grad).all()
