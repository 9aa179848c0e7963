"""Agent-CSWin: official fixture parity (from_official and checkpoint_path), official key listings (and parameter
counts), the stage layout ('A' global agent attention sized by the map, 'B' stripes, global last stage), official
arguments, the 224 checkpoint in the 384 model, any input size, features_only."""
import pytest
import torch
import torch.nn as nn

import visionzoo
from visionzoo.blocks.agent_attn import AgentAttn
from visionzoo.blocks.cswin_attn import CrossShapedWindowAttn
from visionzoo.models import agent_cswin
from visionzoo.models._registry import FAMILIES, MODELS

from ._any_size import check_train_and_eval
from .test_agent_swin import official_resize
from ..fixtures import assert_listing_converts, assert_matches_fixture, load_fixture

LISTING = {"agent_cswin_tiny": "agent_cswin_t", "agent_cswin_small": "agent_cswin_s",
           "agent_cswin_base": "agent_cswin_b", "agent_cswin_base_384": "agent_cswin_b_384"}
#: the fixture's configuration ('a') as visionzoo overrides
SMALL = dict(depths=(1, 2, 2, 1), embed_dim=16, num_heads=(1, 2, 4, 8), num_classes=10)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_official_fixture_parity(backend):
    meta, tensors, sd = load_fixture("agent_cswin_a")
    model = visionzoo.from_official("agent_cswin", meta["constructor_kwargs"], sd)
    assert visionzoo.count_params(model) == meta["num_params"]
    assert model.cfg.attn_type == "AABB" and model.cfg.la_split_size == (56, 28, 14, 7)
    with visionzoo.use_backend(backend):
        assert_matches_fixture(model, tensors)


def assert_official_checkpoint_loads(fixture: str, name: str, tmp_path, **overrides) -> None:
    """The fixture's weights as the official training script saves them (``{"model": ...}``) through
    ``create_model(checkpoint_path=)`` give the official outputs; our own keys then pass the filter untouched."""
    _, tensors, sd = load_fixture(fixture)
    torch.save({"model": sd}, tmp_path / "ckpt.pth")
    model = visionzoo.create_model(name, checkpoint_path=tmp_path / "ckpt.pth", **overrides)
    assert_matches_fixture(model, tensors)
    own = model.state_dict()
    assert all(v is own[k] for k, v in FAMILIES[MODELS[name].family].filter_fn(own, model).items())


def test_official_fixture_through_checkpoint_path(tmp_path):
    assert_official_checkpoint_loads("agent_cswin_a", "agent_cswin_tiny", tmp_path, **SMALL)


@pytest.mark.parametrize("name", sorted(LISTING))
def test_official_key_listing_converts(name):
    """Every official key and shape maps strictly, the parameter count is the listing's (official_params.json's,
    under the official name in the registry metadata: the contract suite)."""
    assert_listing_converts(LISTING[name], name)


@pytest.mark.parametrize("name,splits", [("agent_cswin_tiny", (7, 7)), ("agent_cswin_base_384", (12, 12))])
def test_stage_layout(name, splits):
    """'A' stages: global agent attention with biases sized by the build-time map and the stage's agents; 'B'
    stage 3: stripes of the split, stage 4: global; every LayerNorm eps 1e-5; the 7x7 s4 p2 stem."""
    model = visionzoo.create_model(name, device="meta")
    side = model.cfg.img_size // 4
    for i, stage in enumerate(model.stages):
        for blk in stage.blocks:
            if i < 2:
                assert type(blk.attn) is AgentAttn and blk.attn.map_size == (side >> i, side >> i)
                assert blk.attn.agent_num == (9, 16)[i]
            else:
                assert type(blk.attn) is CrossShapedWindowAttn and blk.attn.global_attn == (i == 3)
                assert blk.attn.split_size == splits[i - 2]
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, nn.LayerNorm))
    conv = model.stem.proj
    assert (conv.kernel_size, conv.stride, conv.padding) == ((7, 7), (4, 4), (2, 2))


def test_from_official_arguments():
    meta, _, _ = load_fixture("agent_cswin_a")
    kw = meta["constructor_kwargs"]
    mixed = visionzoo.from_official("agent_cswin", {**kw, "attn_type": "AAMB1"})
    assert [type(b.attn) for b in mixed.stages[2].blocks] == [AgentAttn, CrossShapedWindowAttn]
    assert visionzoo.from_official("agent_cswin", {**kw, "agent_num": 4}).cfg.agent_num == (4, 4, 4, 4)
    with pytest.raises(NotImplementedError, match="la_split_size"):  # the constructor default: agent stripes
        visionzoo.from_official("agent_cswin", {k: v for k, v in kw.items() if k != "la_split_size"})
    with pytest.raises(ValueError, match="attn_type"):
        visionzoo.from_official("agent_cswin", {**kw, "attn_type": "AAMB"})
    with pytest.raises(NotImplementedError, match="drop_rate"):  # the official blocks never apply proj_drop
        visionzoo.from_official("agent_cswin", {**kw, "drop_rate": 0.1})
    with pytest.raises(NotImplementedError, match="hybrid_backbone"):
        visionzoo.from_official("agent_cswin", {**kw, "hybrid_backbone": "resnet"})
    with pytest.raises(TypeError, match="window_size"):
        visionzoo.from_official("agent_cswin", {**kw, "window_size": 7})


def test_224_checkpoint_into_the_384_model(tmp_path):
    """The official fine-tuning start: the fixture's 224 weights in the 384 layout, agent biases resized along
    their map axis (56 -> 96, 28 -> 48) exactly as the official loader, the rest copied; the model runs at 384."""
    _, _, sd = load_fixture("agent_cswin_a")
    torch.save(sd, tmp_path / "ckpt.pth")
    model = visionzoo.create_model("agent_cswin_base_384", checkpoint_path=tmp_path / "ckpt.pth", **SMALL).eval()
    own = model.state_dict()
    assert own["stages.0.blocks.0.attn.ah_bias"].shape == (1, 1, 9, 96, 1)
    expected = official_resize(agent_cswin.checkpoint_filter_fn(
        sd, visionzoo.create_model("agent_cswin_tiny", **SMALL)), own)
    assert set(expected) == set(own)
    for k, v in expected.items():
        torch.testing.assert_close(own[k], v, atol=1e-6, rtol=1e-6, msg=lambda m: f"{k}: {m}")
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 384, 384))).all()


def test_any_input_size_train_and_eval():
    """A 224 model at 256, 320, 200x232 and 97x131 (agent biases interpolated, stripes padded and masked): a
    training step reaches every parameter, eval logits are finite, the stage taps have the right shapes."""
    model = visionzoo.create_model("agent_cswin_tiny", drop_path_rate=0.1, **{**SMALL, "num_classes": 5})
    check_train_and_eval(model, [(256, 256), (320, 320), (200, 232), (97, 131)])


def test_features_only_four_levels():
    model = visionzoo.create_model("agent_cswin_tiny", features_only=True, **SMALL).eval()
    with torch.no_grad():
        for h, w in [(224, 224), (200, 232)]:
            feats = model(torch.randn(1, 3, h, w))
            assert [f.shape[1] for f in feats] == [16, 32, 64, 128]
            assert [tuple(f.shape[2:]) for f in feats] == [(-(-h // r), -(-w // r)) for r in (4, 8, 16, 32)]
