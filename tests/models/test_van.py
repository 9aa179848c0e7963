"""VAN: official fixture parity (from_official and checkpoint_path), official key listings, parameter
counts, the norms and layer scales checked structurally, the LKA block against its formula, any input size."""
import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import visionzoo
from visionzoo.blocks.large_kernel_attn import VanAttn
from visionzoo.blocks.nhwc import BatchNormNhwc
from visionzoo.models import van
from visionzoo.models._registry import MODELS

from ._any_size import check_train_and_eval
from ..fixtures import assert_listing_converts, assert_matches_fixture, load_fixture, official_params

NAMES = [n for n in visionzoo.list_models() if MODELS[n].family == "van"]
SMALL = dict(depths=(1, 1, 2, 1), widths=(16, 32, 48, 64))


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_official_fixture_parity(backend):
    meta, tensors, sd = load_fixture("van_a")
    model = visionzoo.from_official("van", meta["constructor_kwargs"], sd)
    assert visionzoo.count_params(model) == meta["num_params"]
    with visionzoo.use_backend(backend):
        assert_matches_fixture(model, tensors)


def test_official_fixture_through_checkpoint_path(tmp_path):
    """The official training script's ``{"state_dict": ...}`` wrapping, detected by create_model; the
    converted keys are visionzoo's and convert again to themselves."""
    meta, tensors, sd = load_fixture("van_a")
    torch.save({"state_dict": sd}, tmp_path / "van.pth")
    model = visionzoo.create_model("van_b0", checkpoint_path=tmp_path / "van.pth", mlp_ratios=(8, 8, 4, 4), **SMALL)
    assert model.num_classes == 10
    assert_matches_fixture(model, tensors)
    own = model.state_dict()
    again = van.checkpoint_filter_fn(own, model)
    assert list(again) == list(own) and all(again[k] is own[k] for k in own)


@pytest.mark.parametrize("name", NAMES)
def test_official_key_listing_converts(name):
    assert_listing_converts(name, name)


def test_param_counts():
    counts = official_params()
    assert len(NAMES) == 7
    for name in NAMES:
        assert visionzoo.count_params(visionzoo.create_model(name, device="meta")) == counts[name]["params"], name


def test_norms_and_layer_scales_structurally():
    """The fixture cannot see a LayerNorm eps (1e-5 vs 1e-6 moves outputs by ~1e-5): every stage closes with
    LayerNorm eps 1e-6, block pre-norms are BatchNorm (eps 1e-5), nothing else normalises the output, and the
    layer scales start at 1e-2."""
    model = visionzoo.create_model("van_b0")
    for stage in model.stages:
        assert type(stage.norm) is nn.LayerNorm and stage.norm.eps == 1e-6
        for blk in stage.blocks:
            assert type(blk.norm1) is BatchNormNhwc and type(blk.norm2) is BatchNormNhwc
            assert blk.norm1.eps == blk.norm2.eps == 1e-5
            assert torch.equal(blk.ls1.gamma, torch.full_like(blk.ls1.gamma, 1e-2))
            assert torch.equal(blk.ls2.gamma, torch.full_like(blk.ls2.gamma, 1e-2))
    assert isinstance(model.norm, nn.Identity)
    assert [type(m) for m in model.stem] == [nn.Conv2d, nn.BatchNorm2d] and model.stem[0].kernel_size == (7, 7)


@pytest.mark.parametrize("norm_layer,eps", [
    (functools.partial(nn.LayerNorm, eps=1e-6), 1e-6), (nn.LayerNorm, 1e-5), ("LayerNorm(eps=1e-6)", 1e-6)])
def test_from_official_reads_the_norm_eps(norm_layer, eps):
    kwargs = dict(embed_dims=[16, 32, 48, 64], mlp_ratios=[8, 8, 4, 4], depths=[1, 1, 1, 1], norm_layer=norm_layer)
    model = visionzoo.from_official("van", kwargs)
    assert all(stage.norm.eps == eps for stage in model.stages)


def test_from_official_rejects_other_norms_and_arguments():
    with pytest.raises(NotImplementedError):
        visionzoo.from_official("van", dict(depths=[1, 1, 1, 1], norm_layer=nn.BatchNorm1d))
    with pytest.raises(TypeError, match="window_size"):
        visionzoo.from_official("van", dict(depths=[1, 1, 1, 1], window_size=7))


def _official_attention(attn: VanAttn, x: torch.Tensor) -> torch.Tensor:
    """The official SpatialAttention on NCHW, written from the paper's formula with F.conv2d."""
    c = x.shape[1]
    conv1x1 = lambda t, lin: F.conv2d(t, lin.weight[:, :, None, None], lin.bias)  # noqa: E731
    u = F.gelu(conv1x1(x, attn.proj_1))
    a = F.conv2d(u, attn.lka.conv0.weight, attn.lka.conv0.bias, padding=2, groups=c)
    a = F.conv2d(a, attn.lka.conv_spatial.weight, attn.lka.conv_spatial.bias, padding=9, dilation=3, groups=c)
    return conv1x1(u * conv1x1(a, attn.lka.conv1), attn.proj_2) + x


@pytest.mark.parametrize("shape", [(2, 16, 13, 9), (1, 16, 1, 3), (2, 16, 24, 24)])
def test_lka_block_is_the_official_formula(shape):
    """Train-mode (plain modules) and eval / no-grad (fused GEMMs) outputs, on maps smaller than the 23-pixel
    receptive field too."""
    torch.manual_seed(0)
    attn = VanAttn(shape[1])
    x = torch.randn(shape)
    ref = _official_attention(attn, x).permute(0, 2, 3, 1)
    torch.testing.assert_close(attn(x.permute(0, 2, 3, 1)), ref, atol=1e-5, rtol=1e-5)
    attn.eval()
    with torch.no_grad():
        torch.testing.assert_close(attn(x.permute(0, 2, 3, 1)), ref, atol=1e-5, rtol=1e-5)


def test_any_input_size_train_and_eval():
    """Sizes the official code also runs (its convs are all padded); maps down to 1x1 at stage 4."""
    model = visionzoo.create_model("van_b1", num_classes=5, drop_path_rate=0.1, **SMALL)
    check_train_and_eval(model, [(193, 161), (97, 131), (32, 32)], batch=2)


@pytest.mark.parametrize("name", ["van_b0", "litv2_small"])
def test_fused_inference_equals_plain_modules(name, monkeypatch):
    """Eval + no-grad runs the folded / fused oneDNN path (BN pre-norms folded into proj_1 / fc1, GELU as
    post-ops, layer scale and shortcuts in the GEMMs); it equals the plain modules up to float rounding."""
    from visionzoo.blocks import fused_eval
    if not fused_eval._AVAILABLE:
        pytest.skip("torch built without oneDNN's fused pointwise ops")
    torch.manual_seed(0)
    model = visionzoo.create_model(name, num_classes=5, **(SMALL if name.startswith("van") else dict(
        depths=(1, 1, 2, 1), embed_dim=16, num_heads=(1, 2, 4, 8))))
    model.train()
    model(torch.randn(4, 3, 64, 64))  # non-trivial BN statistics
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    x = torch.randn(2, 3, 67, 45)
    with torch.no_grad():
        fused = model(x)
        monkeypatch.setattr(fused_eval, "_AVAILABLE", False)
        plain = model(x)
    torch.testing.assert_close(fused, plain, atol=1e-4, rtol=1e-4)
