"""LITv2: official fixture parity (from_official and checkpoint_path), the DTM offset layout, official key
listings, parameter counts (alpha ablations included), MLP-only stages, any input size."""
import pytest
import torch

import visionzoo
from visionzoo.blocks.hilo_attn import HiLoAttn
from visionzoo.models import litv2
from visionzoo.models._registry import MODELS

from ._any_size import check_train_and_eval
from ..fixtures import assert_listing_converts, assert_matches_fixture, load_fixture, official_params

NAMES = [n for n in visionzoo.list_models() if MODELS[n].family == "litv2"]
#: registered name -> official key listing (tests/fixtures/official/keys); the alpha ablations have none
LISTING = {"litv2_small": "litv2_s", "litv2_medium": "litv2_m", "litv2_base": "litv2_b",
           "litv2_base_384": "litv2_b_384"}
SMALL = dict(depths=(1, 1, 2, 1), embed_dim=16, num_heads=(1, 2, 4, 8))


def test_official_fixture_parity():
    meta, tensors, sd = load_fixture("litv2_a")
    model = visionzoo.from_official("litv2", meta["constructor_kwargs"], sd)
    assert visionzoo.count_params(model) == meta["num_params"]
    assert_matches_fixture(model, tensors)


def test_official_fixture_through_checkpoint_path(tmp_path):
    meta, tensors, sd = load_fixture("litv2_a")
    torch.save({"model": sd}, tmp_path / "litv2.pth")  # the official (Swin-style) training script's wrapping
    model = visionzoo.create_model("litv2_small", checkpoint_path=tmp_path / "litv2.pth", **SMALL)
    assert model.num_classes == 10
    assert_matches_fixture(model, tensors)
    own = model.state_dict()
    again = litv2.checkpoint_filter_fn(own, model)
    assert list(again) == list(own) and all(again[k] is own[k] for k in own)


def _swap_dy_dx(sd: dict) -> dict:
    """conv_offset channels (dy, dx) per tap -> (dx, dy)."""
    out = dict(sd)
    for k, v in sd.items():
        if ".conv_offset." in k:
            out[k] = v.view(-1, 2, *v.shape[1:]).flip(1).reshape(v.shape)
    return out


def test_dtm_offset_layout_is_dy_dx_interleaved():
    """The official DCN reads offsets as (dy, dx) per kernel tap; read the other way round (dx, dy) the
    fixture's non-zero offsets sample elsewhere and parity fails."""
    meta, tensors, sd = load_fixture("litv2_a")
    model = visionzoo.from_official("litv2", meta["constructor_kwargs"], _swap_dy_dx(sd))
    with torch.no_grad():
        taps = model.forward_intermediates(tensors["input"].float(), intermediates_only=True)
    torch.testing.assert_close(taps[0], tensors["stage.0"], atol=1e-4, rtol=1e-4)  # before the first DTM
    assert (taps[1] - tensors["stage.1"]).abs().max() > 1e-2
    with pytest.raises(AssertionError, match="logits"):
        assert_matches_fixture(model, tensors)


@pytest.mark.parametrize("name", sorted(LISTING))
def test_official_key_listing_converts(name):
    assert_listing_converts(LISTING[name], name)


def test_param_counts():
    counts = official_params()
    assert len(NAMES) == 7
    for name in NAMES:
        key = MODELS[name].meta["official_params_key"]
        assert visionzoo.count_params(visionzoo.create_model(name, device="meta")) == counts[key]["params"], name


@pytest.mark.parametrize("name,lo,hi", [("litv2_small", 10, 2), ("litv2_small_alpha0", 0, 12),
                                        ("litv2_small_alpha0_5", 6, 6), ("litv2_small_alpha1", 12, 0)])
def test_alpha_head_split(name, lo, hi):
    """Stage 3 (s = 2) splits its 12 heads int(12 alpha) Lo-Fi / rest Hi-Fi; stage 4 (s = 1) is plain MSA
    (all 24 heads Lo-Fi, keys l_q, l_kv, l_proj) whatever alpha is."""
    model = visionzoo.create_model(name, device="meta")
    s3, s4 = model.stages[2].blocks[0].attn, model.stages[3].blocks[0].attn
    assert isinstance(s3, HiLoAttn) and (s3.l_heads, s3.h_heads) == (lo, hi)
    assert (s4.l_heads, s4.h_heads) == (24, 0)
    assert {k.split(".")[0] for k in s4.state_dict()} == {"l_q", "l_kv", "l_proj"}


def test_mlp_only_stages():
    """Stages 1-2 are ConvFFN blocks: x + DWMlp(LN(x)), no norm1, no attention, no layer scale."""
    model = visionzoo.create_model("litv2_small", device="meta")
    for stage in model.stages[:2]:
        for blk in stage.blocks:
            assert blk.attn is None and blk.norm1 is None
            assert {k.split(".")[0] for k in blk.state_dict()} == {"norm2", "mlp"}
    assert all(blk.norm1.eps == blk.norm2.eps == 1e-5 for s in model.stages[2:] for blk in s.blocks)
    assert model.norm.eps == 1e-5 and model.stem.norm.eps == 1e-5


def test_from_official_arguments():
    meta, _, _ = load_fixture("litv2_a")
    kw = meta["constructor_kwargs"]
    with pytest.raises(NotImplementedError, match="ape"):
        visionzoo.from_official("litv2", {**kw, "ape": True})
    with pytest.raises(TypeError, match="window_size"):
        visionzoo.from_official("litv2", {**kw, "window_size": 7})
    model = visionzoo.from_official("litv2", {**kw, "has_msa": [0, 0, 0, 1]})  # stage 3 becomes ConvFFN
    assert model.cfg.local_ws == (0, 0, 0, 1)


@pytest.mark.parametrize("name", ["litv2_small", "litv2_small_alpha0", "litv2_small_alpha1"])
def test_any_input_size_train_and_eval(name):
    """Odd maps at every stage (DTM pads to even, HiLo masks partial windows); the official code only runs
    its img_size."""
    model = visionzoo.create_model(name, num_classes=5, drop_path_rate=0.1, **SMALL)
    check_train_and_eval(model, [(193, 161), (97, 131), (32, 32)], batch=2)
