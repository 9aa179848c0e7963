"""Agent-PVT: official fixture parity (from_official and checkpoint_path), q / kv merged into qkv, official key
listings (224 and the 224 -> 256 resized load; parameter counts: the contract suite), norms / position
embeddings / no final norm checked structurally, official-argument handling, any input size."""
import pytest
import torch
import torch.nn as nn

import visionzoo
from visionzoo.blocks.agent_attn import AgentAttn
from visionzoo.models import agent_pvt
from visionzoo.models._pvt_swin_convert import PVT_POS_RULE, PVT_RULES, merge_q_kv
from visionzoo.models._registry import MODELS

from ._any_size import check_train_and_eval
from .test_agent_swin import assert_resized_as_official
from ..fixtures import assert_listing_converts, assert_matches_fixture, load_fixture, official_keys

NAMES = [n for n in visionzoo.list_models() if MODELS[n].family == "agent_pvt"]
#: registered name -> official key listing (tests/fixtures/official/keys)
LISTING = {"agent_pvt_tiny": "agent_pvt_t", "agent_pvt_small": "agent_pvt_s", "agent_pvt_medium": "agent_pvt_m",
           "agent_pvt_large": "agent_pvt_l", "agent_pvt_medium_256": "agent_pvt_m_256"}
SMALL = dict(depths=(1, 1, 2, 1), widths=(16, 32, 48, 64), num_heads=(1, 2, 3, 4))  # the fixture's layout


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_official_fixture_parity(backend):
    meta, tensors, sd = load_fixture("agent_pvt_a")
    model = visionzoo.from_official("agent_pvt", meta["constructor_kwargs"], sd)
    assert visionzoo.count_params(model) == meta["num_params"]
    with visionzoo.use_backend(backend):
        assert_matches_fixture(model, tensors)


def test_official_fixture_through_checkpoint_path(tmp_path):
    """The official training script's ``{"model": ...}`` wrapping, detected by create_model; the converted keys
    are visionzoo's and convert again to themselves."""
    meta, tensors, sd = load_fixture("agent_pvt_a")
    torch.save({"model": sd}, tmp_path / "agent_pvt.pth")
    model = visionzoo.create_model("agent_pvt_tiny", checkpoint_path=tmp_path / "agent_pvt.pth", **SMALL)
    assert model.num_classes == 10
    assert_matches_fixture(model, tensors)
    own = model.state_dict()
    again = agent_pvt.checkpoint_filter_fn(own, model)
    assert list(again) == list(own) and all(again[k] is own[k] for k in own)


def test_q_and_kv_become_one_qkv():
    """Official ``attn.q`` (C -> C) and ``attn.kv`` (C -> 2C) are stacked as rows q | k | v of ``attn.qkv``."""
    meta, _, sd = load_fixture("agent_pvt_a")
    model = visionzoo.from_official("agent_pvt", meta["constructor_kwargs"], sd)
    attn = model.stages[2].blocks[1].attn
    for kind in ("weight", "bias"):
        q, kv = sd[f"block3.1.attn.q.{kind}"], sd[f"block3.1.attn.kv.{kind}"]
        torch.testing.assert_close(getattr(attn.qkv, kind).detach(), torch.cat([q, kv], 0), atol=0, rtol=0)
    assert not any(".attn.q." in k or ".attn.kv." in k for k in model.state_dict())


@pytest.mark.parametrize("name", sorted(LISTING))
def test_official_key_listing_converts(name):
    assert_listing_converts(LISTING[name], name)


def test_224_listing_loads_into_the_256_model():
    """agent_pvt_m's keys fit agent_pvt_medium_256 once the position embeddings (56x56 -> 64x64...) and the agent
    biases (56 -> 64...) are resized."""
    model = visionzoo.create_model("agent_pvt_medium_256", device="meta")
    fake = {k: torch.empty(shape, device="meta") for k, shape in official_keys("agent_pvt_m")["state_dict"].items()}
    converted = agent_pvt.checkpoint_filter_fn(fake, model)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in
                                                                 model.state_dict().items()}


def test_224_checkpoint_at_256_resizes_as_the_official_fine_tuning(tmp_path):
    """The fixture's 224 weights loaded into the same layout built for 256: every resized tensor equals the
    official loader's, the rest is copied, and the model runs at 256."""
    meta, _, sd = load_fixture("agent_pvt_a")
    torch.save(sd, tmp_path / "agent_pvt_224.pth")
    model = visionzoo.create_model("agent_pvt_tiny", checkpoint_path=tmp_path / "agent_pvt_224.pth", img_size=256,
                                   **SMALL)
    own = model.state_dict()
    assert own["stages.0.pos_embed"].shape == (1, 64 * 64, 16)
    assert own["stages.3.blocks.0.attn.wa_bias"].shape == (1, 4, 1, 8, 49)
    official = merge_q_kv(visionzoo.convert.rename(sd, PVT_RULES + [PVT_POS_RULE]), own)
    assert_resized_as_official(model, official, 256)


@pytest.mark.parametrize("name,side", [("agent_pvt_small", 56), ("agent_pvt_medium_256", 64)])
def test_structure_norms_position_embeddings(name, side):
    """The fixture cannot see a LayerNorm eps: block norms 1e-6, patch-embed norms 1e-5, no final norm, no stage
    norm; every block is global agent attention sized by the build-time stage map, with 9 / 16 / 49 / 49 agents,
    and every stage has a position embedding of that map."""
    model = visionzoo.create_model(name, device="meta")
    assert isinstance(model.norm, nn.Identity)
    assert model.stem.norm.eps == 1e-5 and model.stem.proj.kernel_size == (4, 4)
    for i, stage in enumerate(model.stages):
        m = side >> i
        assert isinstance(stage.norm, nn.Identity) and stage.pos_embed.shape == (1, m * m, model.cfg.widths[i])
        if i:
            assert stage.downsample.norm.eps == 1e-5 and stage.downsample.proj.kernel_size == (2, 2)
        for blk in stage.blocks:
            assert blk.norm1.eps == blk.norm2.eps == 1e-6
            assert type(blk.attn) is AgentAttn and blk.attn.ah_bias.shape[2:4] == ((9, 16, 49, 49)[i], m)


def test_from_official_arguments():
    meta, _, _ = load_fixture("agent_pvt_a")
    kw = meta["constructor_kwargs"]
    assert visionzoo.from_official("agent_pvt", {**kw, "agent_sr_ratios": 1111}).cfg == \
        visionzoo.from_official("agent_pvt", kw).cfg  # models/build.py passes str(1111); the default is int
    plain = {k: v for k, v in kw.items() if k not in ("norm_layer", "qkv_bias")}
    model = visionzoo.from_official("agent_pvt", plain)  # the class defaults: LayerNorm eps 1e-5, no qkv bias
    assert model.stages[0].blocks[0].norm1.eps == 1e-5 and model.stages[0].blocks[0].attn.qkv.bias is None
    with pytest.raises(NotImplementedError, match="attn_type"):
        visionzoo.from_official("agent_pvt", {**kw, "attn_type": "AABB"})
    with pytest.raises(NotImplementedError, match="agent_sr_ratios"):
        visionzoo.from_official("agent_pvt", {**kw, "agent_sr_ratios": "2111"})
    with pytest.raises(TypeError, match="window_size"):
        visionzoo.from_official("agent_pvt", {**kw, "window_size": 7})


def test_any_input_size_train_and_eval():
    """Built for 224, run at 256, 320, 200x232 and 97x131 (position embeddings and agent biases interpolated,
    odd maps padded by the 2x2 patch embeds): a training step reaches every parameter, eval logits are finite,
    the stage taps have the right shapes."""
    model = visionzoo.create_model("agent_pvt_tiny", num_classes=5, drop_path_rate=0.1, **SMALL)
    check_train_and_eval(model, [(256, 256), (320, 320), (200, 232), (97, 131)])
