"""SHViT: official fixture parity, timm-weight parity, official key listings, fuse(), any input size."""

import pytest
import timm
import torch

import visionzoo
from visionzoo.models._registry import MODELS

from ._any_size import check_train_and_eval
from ..fixtures import assert_listing_converts, assert_matches_fixture, load_fixture, official_params

NAMES = [n for n in visionzoo.list_models() if MODELS[n].family == "single_head_vit"]
SMALL = dict(widths=(32, 48, 64), partial_dims=(8, 12, 16), depths=(1, 2, 2))


def _perturbed(state_dict: dict, seed: int = 0) -> dict:
    """Norm parameters and statistics redrawn (zero-init gammas become non-zero, BN is no identity),
    so no branch is silently zero and a wrong key or formula changes the output; conv and linear
    weights keep their (random) initialisation, so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    out = dict(state_dict)
    for k, v in state_dict.items():
        if not v.is_floating_point() or v.dim() != 1 or k.startswith("head.fc") or k.startswith("head.l"):
            continue
        if k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith("weight"):
            out[k] = 0.5 + 0.5 * torch.rand(v.shape, generator=g)
        else:  # biases and running means
            out[k] = 0.1 * torch.randn(v.shape, generator=g)
    return out


def test_official_fixture_parity():
    meta, tensors, sd = load_fixture("shvit_a")
    model = visionzoo.from_official("shvit", meta["constructor_kwargs"], sd)
    assert visionzoo.count_params(model) == meta["num_params"]
    assert_matches_fixture(model, tensors)


def test_official_fixture_through_checkpoint_path(tmp_path):
    meta, tensors, sd = load_fixture("shvit_a")
    torch.save({"model": sd}, tmp_path / "shvit.pth")  # the official training script's wrapping
    kw = meta["constructor_kwargs"]
    model = visionzoo.create_model("shvit_s1", checkpoint_path=tmp_path / "shvit.pth", widths=tuple(kw["embed_dim"]),
                                   partial_dims=tuple(kw["partial_dim"]), depths=tuple(kw["depth"]))
    assert model.num_classes == 10
    assert_matches_fixture(model, tensors)


@pytest.mark.parametrize("name", NAMES)
def test_official_key_listing_converts(name):
    assert_listing_converts(name, name)


def _timm_pair(name: str, tmp_path, **kwargs):
    """timm's model with perturbed weights, and ours loaded from its state_dict through checkpoint_path."""
    torch.manual_seed(0)
    theirs = timm.create_model(name, **kwargs)
    theirs.load_state_dict(_perturbed(theirs.state_dict()))
    torch.save(theirs.state_dict(), tmp_path / f"{name}.pth")
    ours = visionzoo.create_model(name, checkpoint_path=tmp_path / f"{name}.pth", **{
        {"embed_dim": "widths", "partial_dim": "partial_dims", "depth": "depths"}.get(k, k): v
        for k, v in kwargs.items()})
    return theirs.eval(), ours.eval()


def test_timm_weights_give_timm_outputs(tmp_path):
    theirs, ours = _timm_pair("shvit_s1", tmp_path, embed_dim=(32, 48, 64), partial_dim=(8, 12, 16), depth=(1, 2, 2))
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=1e-4)
        want = theirs.forward_intermediates(x, intermediates_only=True)
        for got, ref in zip(ours.forward_intermediates(x, intermediates_only=True), want):
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.extended
@pytest.mark.parametrize("name", NAMES)
def test_timm_weights_give_timm_outputs_full_size(name, tmp_path):
    theirs, ours = _timm_pair(name, tmp_path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=1e-4)


def test_fuse_keeps_outputs():
    model = visionzoo.create_model("shvit_s1", num_classes=7, **SMALL)
    model.load_state_dict(_perturbed(model.state_dict()))
    model.eval()
    x = torch.randn(2, 3, 80, 112)
    with torch.no_grad():
        want, taps = model(x), model.forward_intermediates(x, intermediates_only=True)
        model.fuse()
        assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)) for m in model.modules())
        torch.testing.assert_close(model(x), want, atol=1e-4, rtol=1e-4)
        for got, ref in zip(model.forward_intermediates(x, intermediates_only=True), taps):
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_fused_param_counts_equal_official_deploy(name):
    counts = official_params()
    model = visionzoo.create_model(name, device="meta").fuse()
    assert visionzoo.count_params(model) == counts[name]["params_bn_fused"]


def test_any_input_size_train_and_eval():
    model = visionzoo.create_model("shvit_s4", num_classes=5, **SMALL)
    check_train_and_eval(model, [(32, 32), (200, 232), (97, 131), (256, 256)], batch=2)


def test_config_errors():
    with pytest.raises(ValueError, match="types entries must be 's' or 'i'"):
        visionzoo.create_model("shvit_s1", types=("i", "x", "s"), device="meta")
    with pytest.raises(ValueError, match="partial_dims needs one entry per stage"):
        visionzoo.create_model("shvit_s1", partial_dims=(8, 8), device="meta")
    with pytest.raises(ValueError, match="pdim must be in"):
        visionzoo.create_model("shvit_s1", partial_dims=(32, 500, 68), device="meta")
    with pytest.raises(NotImplementedError, match="distillation"):
        visionzoo.from_official("shvit", dict(distillation=True))
