"""FLatten-Swin: official fixture parity (from_official and checkpoint_path), official key listings (and parameter
counts), the official window rules ('L' global, 'S' 7 or 12 with shift), 'M' stages, official arguments, the 224
checkpoint in the 384 model, any input size."""
import pytest
import torch
import torch.nn.functional as F

import visionzoo
from visionzoo.blocks.focused_linear_attn import FocusedLinearAttn
from visionzoo.blocks.window_attn import SwinWindowAttn
from visionzoo.models import flatten_swin
from visionzoo.models._registry import MODELS

from ._any_size import check_train_and_eval
from ..fixtures import assert_listing_converts, assert_matches_fixture, load_fixture

NAMES = [n for n in visionzoo.list_models() if MODELS[n].family == "flatten_swin"]
LISTING = {"flatten_swin_tiny": "flatten_swin_t", "flatten_swin_small": "flatten_swin_s",
           "flatten_swin_base": "flatten_swin_b", "flatten_swin_base_384": "flatten_swin_b_384"}
#: the fixture's configuration ('a') as visionzoo overrides
SMALL = dict(depths=(1, 1, 2, 1), embed_dim=16, num_heads=(1, 2, 4, 8), num_classes=10)


def test_official_fixture_parity(tmp_path):
    """Through from_official, and through create_model(checkpoint_path=) on the official training script's
    ``{"model": sd}`` file; our own keys then pass the filter untouched. Parameter counts of every variant:
    the key-listing test below and the contract suite."""
    meta, tensors, sd = load_fixture("flatten_swin_a")
    model = visionzoo.from_official("flatten_swin", meta["constructor_kwargs"], sd)
    assert visionzoo.count_params(model) == meta["num_params"]
    assert_matches_fixture(model, tensors)
    torch.save({"model": sd}, tmp_path / "ckpt.pth")
    loaded = visionzoo.create_model("flatten_swin_tiny", checkpoint_path=tmp_path / "ckpt.pth", **SMALL)
    assert_matches_fixture(loaded, tensors)
    own = loaded.state_dict()
    assert all(v is own[k] for k, v in flatten_swin.checkpoint_filter_fn(own, loaded).items())


@pytest.mark.parametrize("name", sorted(LISTING))
def test_official_key_listing_converts(name):
    assert len(NAMES) == len(LISTING)
    assert_listing_converts(LISTING[name], name)


@pytest.mark.parametrize("name,size,window", [("flatten_swin_tiny", 224, 7), ("flatten_swin_base_384", 384, 12)])
def test_window_rules(name, size, window):
    """'L' stages: focused linear attention over the whole build-time map (the official 56 / 96 window clamped
    to it); 'S' stages: Swin windows 7 (12 at 384), shifted on odd blocks except where the map is no larger
    than the window (the last stage at 224 and at 384)."""
    model = visionzoo.create_model(name, device="meta")
    maps = [size // 4 // 2 ** i for i in range(4)]
    for stage, m in zip(model.stages[:2], maps):
        assert all(isinstance(b.attn, FocusedLinearAttn) and b.attn.map_size == (m, m) for b in stage.blocks)
    for stage, m in zip(model.stages[2:], maps[2:]):
        for j, blk in enumerate(stage.blocks):
            assert isinstance(blk.attn, SwinWindowAttn) and blk.attn.window_size == window
            assert blk.attn.shift == (j % 2 == 1)
            assert blk.attn.shift_for(m, m) == (window // 2 if j % 2 and m > window else 0)
    assert model.stages[2].blocks[1].attn.shift_for(maps[2], maps[2]) == window // 2
    assert all(blk.norm1.eps == 1e-5 for s in model.stages for blk in s.blocks) and model.norm.eps == 1e-5
    assert model.no_weight_decay() == {"*.relative_position_bias_table"}


def test_m_stages():
    """Official 'M<k>' stages: the first k blocks focused linear, the rest Swin (shift on odd blocks)."""
    meta, _, _ = load_fixture("flatten_swin_a")
    kw = {**meta["constructor_kwargs"], "depths": [1, 1, 4, 1], "attn_type": "LLMS3"}
    model = visionzoo.from_official("flatten_swin", kw)
    kinds = [type(b.attn).__name__ for b in model.stages[2].blocks]
    assert kinds == ["FocusedLinearAttn"] * 3 + ["SwinWindowAttn"] and model.stages[2].blocks[3].attn.shift
    assert torch.isfinite(model(torch.randn(1, 3, 96, 96))).all()
    with pytest.raises(ValueError, match="attn_type"):
        visionzoo.create_model("flatten_swin_tiny", attn_type="LLMS", device="meta")


def test_from_official_arguments():
    meta, _, _ = load_fixture("flatten_swin_a")
    kw = meta["constructor_kwargs"]
    with pytest.raises(NotImplementedError, match="window"):  # 7x7 windows of focused linear attention on 56x56
        visionzoo.from_official("flatten_swin", {**kw, "window_size": 7})
    with pytest.raises(NotImplementedError, match="ape"):
        visionzoo.from_official("flatten_swin", {**kw, "ape": True})
    with pytest.raises(TypeError, match="la_sr_ratios"):
        visionzoo.from_official("flatten_swin", {**kw, "la_sr_ratios": "1111"})
    big = visionzoo.from_official("flatten_swin", {**kw, "img_size": 384, "window_size": 96}).eval()
    assert big.cfg.window_size == 12 and big.stages[0].blocks[0].attn.map_size == (96, 96)
    assert not visionzoo.from_official("flatten_swin", {**kw, "patch_norm": False}).cfg.patch_norm


def test_224_checkpoint_into_the_384_model(tmp_path):
    """The official fine-tuning start (its ``utils.load_pretrained``): positional encodings (56 -> 96, 28 -> 48)
    and bias tables (13x13 -> 23x23) resized bicubically; the load is strict and the model runs."""
    _, _, sd = load_fixture("flatten_swin_a")
    torch.save(sd, tmp_path / "ckpt.pth")
    model = visionzoo.create_model("flatten_swin_base_384", checkpoint_path=tmp_path / "ckpt.pth", **SMALL).eval()
    pe = sd["layers.0.blocks.0.attn.positional_encoding"].permute(0, 2, 1).reshape(1, 16, 56, 56)
    want = F.interpolate(pe, size=(96, 96), mode="bicubic", align_corners=False).reshape(1, 16, -1).permute(0, 2, 1)
    torch.testing.assert_close(model.stages[0].blocks[0].attn.positional_encoding, want)
    table = sd["layers.2.blocks.0.attn.relative_position_bias_table"].t().reshape(1, 4, 13, 13)
    want = F.interpolate(table, size=(23, 23), mode="bicubic", align_corners=False).reshape(4, -1).t()
    torch.testing.assert_close(model.stages[2].blocks[0].attn.relative_position_bias_table, want)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 384, 384))).all()


def test_any_input_size_train_and_eval():
    """A 224 model at other sizes: positional encodings interpolated, Swin windows padded and masked,
    PatchMerging padding odd maps."""
    model = visionzoo.create_model("flatten_swin_tiny", drop_path_rate=0.1, **{**SMALL, "num_classes": 5})
    check_train_and_eval(model, [(256, 256), (320, 320), (200, 232), (97, 131)])
