"""BiFormer: official fixture parity (from_official and checkpoint_path), official key listings,
parameter counts, any input size with masked padding, backends, official-argument errors."""

import pytest
import torch

import visionzoo
from visionzoo.blocks.routing_attn import BiLevelRoutingAttn
from visionzoo.models._registry import MODELS

from ._any_size import check_train_and_eval
from ..fixtures import assert_listing_converts, assert_matches_fixture, load_fixture, official_params

NAMES = [n for n in visionzoo.list_models() if MODELS[n].family == "biformer"]
SMALL = dict(depths=(1, 1, 2, 1), widths=(16, 32, 48, 64), head_dim=8)


def test_official_fixture_parity():
    meta, tensors, sd = load_fixture("biformer_a")
    model = visionzoo.from_official("biformer", meta["constructor_kwargs"], sd)
    assert visionzoo.count_params(model) == meta["num_params"]
    assert_matches_fixture(model, tensors)


def test_official_fixture_through_checkpoint_path(tmp_path):
    meta, tensors, sd = load_fixture("biformer_a")
    torch.save({"model": sd}, tmp_path / "biformer.pth")  # the official training script's wrapping
    kw = meta["constructor_kwargs"]
    model = visionzoo.create_model("biformer_tiny", checkpoint_path=tmp_path / "biformer.pth",
                                   depths=tuple(kw["depth"]), widths=tuple(kw["embed_dim"]),
                                   head_dim=kw["head_dim"])
    assert model.num_classes == 10
    assert_matches_fixture(model, tensors)


@pytest.mark.parametrize("name", NAMES)
def test_official_key_listing_converts(name):
    assert_listing_converts(name, name)


def test_param_counts():
    counts = official_params()
    for name in NAMES:
        assert visionzoo.count_params(visionzoo.create_model(name, device="meta")) == counts[name]["params"], name


@pytest.mark.parametrize("name,sizes", [
    ("biformer_tiny", [(224, 224), (256, 256), (320, 320), (200, 232), (512, 384), (32, 32)]),
    ("biformer_stl", [(256, 256), (200, 232), (96, 72)]),
])
def test_any_input_size(name, sizes):
    """The brief's sizes; all but 224 are rejected by the official code (a map not divisible by 7)."""
    model = visionzoo.create_model(name, **SMALL)
    check_train_and_eval(model, sizes, batch=2)


@pytest.mark.parametrize("shape", [(14, 14), (14, 21), (7, 35)])
def test_padded_input_equals_unpadded_where_divisible(shape):
    """A map divisible by n_win = 7 runs unpadded. With n_win = 8 the regions keep their size
    (ceil(n / 8) == n / 7 here), but the map is padded by one row/column of whole regions. Padding
    that is really masked out of the routing and the attention gives the same output."""
    torch.manual_seed(0)
    layer = BiLevelRoutingAttn(32, num_heads=4, n_win=7, topk=3).eval()
    padded = BiLevelRoutingAttn(32, num_heads=4, n_win=8, topk=3).eval()
    padded.load_state_dict(layer.state_dict())
    x = torch.randn(2, *shape, 32)
    with torch.no_grad():
        for backend in ("reference", "cpu") + (("triton",) if shape == (14, 14) else ()):  # interpreted: slow
            layer.backend = padded.backend = backend
            torch.testing.assert_close(padded(x), layer(x), atol=1e-5, rtol=1e-5, msg=lambda m: f"{backend}: {m}")


@pytest.mark.parametrize("kwargs,exc", [
    (dict(kv_downsample_mode="ada_avgpool"), NotImplementedError),
    (dict(topks=[1, 4, -1, -2]), NotImplementedError),
    (dict(not_an_arg=1), TypeError),
])
def test_unsupported_official_arguments_raise(kwargs, exc):
    meta, _, _ = load_fixture("biformer_a")
    with pytest.raises(exc):
        visionzoo.from_official("biformer", {**meta["constructor_kwargs"], **kwargs})
