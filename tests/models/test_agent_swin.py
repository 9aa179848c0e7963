"""Agent-Swin: official fixture parity (from_official and checkpoint_path), official key listings (224 and the
224 -> 288 / 384 resized load; parameter counts: the contract suite), stage types / windows / shifts / norms
checked structurally, official-argument handling, any input size."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import visionzoo
from visionzoo.models._pvt_swin_convert import SWIN_RULES
from visionzoo.blocks.agent_attn import AgentAttn
from visionzoo.blocks.window_attn import SwinWindowAttn
from visionzoo.models import agent_swin
from visionzoo.models._registry import MODELS

from ._any_size import check_train_and_eval
from ..fixtures import assert_listing_converts, assert_matches_fixture, load_fixture, official_keys

NAMES = [n for n in visionzoo.list_models() if MODELS[n].family == "agent_swin"]
#: registered name -> official key listing (tests/fixtures/official/keys)
LISTING = {"agent_swin_tiny": "agent_swin_t", "agent_swin_small": "agent_swin_s", "agent_swin_base": "agent_swin_b",
           "agent_swin_small_288": "agent_swin_s_288", "agent_swin_base_384": "agent_swin_b_384"}
SMALL = dict(depths=(1, 1, 2, 1), embed_dim=16, num_heads=(1, 2, 4, 8))  # the fixture's layout


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_official_fixture_parity(backend):
    meta, tensors, sd = load_fixture("agent_swin_a")
    model = visionzoo.from_official("agent_swin", meta["constructor_kwargs"], sd)
    assert visionzoo.count_params(model) == meta["num_params"]
    assert model.cfg.attn_type == ("A", "A", "A", "B") and model.cfg.window_size == 56
    with visionzoo.use_backend(backend):
        assert_matches_fixture(model, tensors)


def test_official_fixture_through_checkpoint_path(tmp_path):
    """The official training script's ``{"model": ...}`` wrapping, buffers included, detected by create_model;
    the converted keys are visionzoo's and convert again to themselves."""
    meta, tensors, sd = load_fixture("agent_swin_a")
    torch.save({"model": sd}, tmp_path / "agent_swin.pth")
    model = visionzoo.create_model("agent_swin_tiny", checkpoint_path=tmp_path / "agent_swin.pth", **SMALL)
    assert model.num_classes == 10
    assert_matches_fixture(model, tensors)
    own = model.state_dict()
    again = agent_swin.checkpoint_filter_fn(own, model)
    assert list(again) == list(own) and all(again[k] is own[k] for k in own)


@pytest.mark.parametrize("name", sorted(LISTING))
def test_official_key_listing_converts(name):
    assert_listing_converts(LISTING[name], name)


@pytest.mark.parametrize("listing,name", [("agent_swin_s", "agent_swin_small_288"),
                                          ("agent_swin_b", "agent_swin_base_384")])
def test_224_listing_loads_into_the_larger_model(listing, name):
    """A 224 checkpoint's keys fit the 288 / 384 model once the resolution-dependent tensors are resized
    (agent biases 56 -> 72 / 96 along their map axis, Swin tables 13x13 -> 17x17 / 23x23)."""
    model = visionzoo.create_model(name, device="meta")
    fake = {k: torch.empty(shape, device="meta") for k, shape in official_keys(listing)["state_dict"].items()}
    converted = agent_swin.checkpoint_filter_fn(fake, model)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in
                                                                 model.state_dict().items()}


def official_resize(sd: dict, current: dict) -> dict:
    """The official fine-tuning loader's resizing (agent_transformer/utils.py: load_pretrained), transcribed:
    agent biases linear along their map axis, Swin tables and (PVT) ``pos_embed`` bicubic as square maps."""
    out = dict(sd)
    for k, v in sd.items():
        if k not in current or v.shape == current[k].shape:
            continue
        if k.endswith(("ah_bias", "aw_bias", "ha_bias", "wa_bias")):
            squeeze_dim, permute = {"ah_bias": (-1, False), "aw_bias": (-2, False), "ha_bias": (-2, True),
                                    "wa_bias": (-3, True)}[k.rsplit(".", 1)[1]]
            old, new = v.squeeze(0).squeeze(squeeze_dim), current[k].squeeze(0).squeeze(squeeze_dim)
            if permute:
                old, new = old.permute(0, 2, 1), new.permute(0, 2, 1)
            resized = F.interpolate(old, size=new.shape[-1], mode="linear")
            out[k] = (resized.permute(0, 2, 1) if permute else resized).unsqueeze(0).unsqueeze(squeeze_dim)
        elif k.endswith("relative_position_bias_table"):
            (l1, heads), l2 = v.shape, current[k].shape[0]
            s1, s2 = int(l1 ** 0.5), int(l2 ** 0.5)
            out[k] = F.interpolate(v.permute(1, 0).view(1, heads, s1, s1), size=(s2, s2),
                                   mode="bicubic").view(heads, l2).permute(1, 0)
        elif k.endswith("pos_embed"):
            (_, l1, c), l2 = v.shape, current[k].shape[1]
            s1, s2 = int(l1 ** 0.5), int(l2 ** 0.5)
            grid = F.interpolate(v.reshape(-1, s1, s1, c).permute(0, 3, 1, 2), size=(s2, s2), mode="bicubic")
            out[k] = grid.permute(0, 2, 3, 1).flatten(1, 2)
    return out


def assert_resized_as_official(model, renamed: dict, size: int) -> None:
    """``model`` (loaded from a checkpoint of another img_size) holds ``renamed`` (that checkpoint with
    visionzoo keys) resized by the official loader, every other tensor copied, and runs at ``size``."""
    own = model.state_dict()
    expected = official_resize(renamed, own)
    assert set(expected) == set(own)
    for k, v in expected.items():
        torch.testing.assert_close(own[k], v, atol=1e-6, rtol=1e-6, msg=lambda m: f"{k}: {m}")
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(1, 3, size, size))).all()


def test_224_checkpoint_at_288_resizes_as_the_official_fine_tuning(tmp_path):
    """The fixture's 224 weights loaded into the same layout built for 288 (WINDOW_SIZE 72: Swin window 9):
    every resized tensor equals the official loader's, the rest is copied, and the model runs at 288."""
    meta, _, sd = load_fixture("agent_swin_a")
    torch.save(sd, tmp_path / "agent_swin_224.pth")
    model = visionzoo.create_model("agent_swin_tiny", checkpoint_path=tmp_path / "agent_swin_224.pth", img_size=288,
                                   **SMALL)
    own = model.state_dict()
    assert own["stages.0.blocks.0.attn.ah_bias"].shape == (1, 1, 9, 72, 1)
    assert own["stages.3.blocks.0.attn.relative_position_bias_table"].shape == (17 * 17, 8)
    official = {k: v for k, v in sd.items() if not k.endswith(("relative_position_index", "attn_mask"))}
    assert_resized_as_official(model, visionzoo.convert.rename(official, SWIN_RULES), 288)


@pytest.mark.parametrize("name,window,agent_blocks", [
    ("agent_swin_tiny", 7, (2, 2, 6, 0)), ("agent_swin_small", 7, (2, 2, 0, 0)), ("agent_swin_base", 7, (2, 2, 2, 0)),
    ("agent_swin_small_288", 9, (2, 2, 0, 0)), ("agent_swin_base_384", 12, (2, 2, 2, 0))])
def test_stage_types_windows_and_norms(name, window, agent_blocks):
    """'A' blocks are global agent attention sized by the stage map, 'B' blocks Swin windows of
    max(7, WINDOW_SIZE // 8) shifted on odd blocks (counted from the stage start, so in an 'M2' stage too);
    every LayerNorm has eps 1e-5 (the fixture cannot see an eps)."""
    model = visionzoo.create_model(name, device="meta")
    side = model.cfg.img_size // 4
    for i, stage in enumerate(model.stages):
        for j, blk in enumerate(stage.blocks):
            if j < agent_blocks[i]:
                assert type(blk.attn) is AgentAttn and blk.attn.ah_bias.shape[3] == side >> i
                assert blk.attn.an_bias.shape[1] == model.cfg.agent_num[i]
            else:
                assert type(blk.attn) is SwinWindowAttn
                assert blk.attn.window_size == min(window, side >> i) and blk.attn.shift == (j % 2 == 1)
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(m.eps == 1e-5 for m in norms)
    assert model.no_weight_decay() == {"*.relative_position_bias_table"}


def test_from_official_arguments():
    meta, _, _ = load_fixture("agent_swin_a")
    kw = meta["constructor_kwargs"]
    model = visionzoo.from_official("agent_swin", {**kw, "attn_type": "AAMB1"})
    assert model.cfg.attn_type == ("A", "A", "M1", "B")
    assert [type(b.attn) for b in model.stages[2].blocks] == [AgentAttn, SwinWindowAttn]
    defaults = {k: v for k, v in kw.items() if k not in ("attn_type", "window_size")}
    plain = visionzoo.from_official("agent_swin", defaults)
    assert all(type(b.attn) is SwinWindowAttn for s in plain.stages for b in s.blocks)  # official default: Swin
    with pytest.raises(NotImplementedError, match="ape"):
        visionzoo.from_official("agent_swin", {**kw, "ape": True})
    with pytest.raises(NotImplementedError, match="windowed agent attention"):
        visionzoo.from_official("agent_swin", {**kw, "window_size": 7})
    with pytest.raises(ValueError, match="attn_type"):
        visionzoo.from_official("agent_swin", {**kw, "attn_type": "AAMB"})
    with pytest.raises(TypeError, match="sr_ratios"):
        visionzoo.from_official("agent_swin", {**kw, "sr_ratios": [8, 4, 2, 1]})


@pytest.mark.parametrize("name", ["agent_swin_tiny", "agent_swin_base"])
def test_any_input_size_train_and_eval(name):
    """A model built for 224 at 256, 320, 200x232 and 97x131 (agent biases interpolated, Swin windows padded):
    a training step reaches every parameter, eval logits are finite, the stage taps have the right shapes."""
    depths = (1, 1, 3, 1) if name == "agent_swin_base" else (1, 1, 2, 1)
    model = visionzoo.create_model(name, num_classes=5, drop_path_rate=0.1, **{**SMALL, "depths": depths})
    check_train_and_eval(model, [(256, 256), (320, 320), (200, 232), (97, 131)])


def test_features_only_at_other_sizes():
    model = visionzoo.create_model("agent_swin_small_288", features_only=True, **SMALL).eval()
    with torch.no_grad():
        for h, w in [(224, 224), (200, 232)]:
            feats = model(torch.randn(1, 3, h, w))
            assert [f.shape[1] for f in feats] == [16, 32, 64, 128]
            assert [tuple(f.shape[2:]) for f in feats] == [(-(-h // r), -(-w // r)) for r in (4, 8, 16, 32)]
