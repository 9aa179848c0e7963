"""Agent-DeiT: official fixture parity (from_official and checkpoint_path), the official key listings (224 and the
224 -> 448 resized load; parameter counts: the contract suite), the class-token agent attention against a plain
transcription, agents per block by the official stage map, agent_layer (Agent-DeiT-B), norms, official-argument
handling, the head's pooling options, any input size."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.attention import Attention

import visionzoo
from visionzoo.blocks.agent_attn_cls import AgentAttnCls
from visionzoo.models import agent_deit
from visionzoo.models._registry import MODELS

from ._any_size import check_train_and_eval
from .test_agent_swin import official_resize
from ..fixtures import assert_listing_converts, assert_matches_fixture, load_fixture, official_keys

NAMES = [n for n in visionzoo.list_models() if MODELS[n].family == "agent_deit"]
#: the fixture's layout: 4 blocks (one per level), 9 / 9 / 16 / 16 agents
SMALL = dict(embed_dim=48, depth=4, num_heads=3, agent_num=(9, 16, 49, 49))


def test_every_variant_has_a_listing():
    assert sorted(NAMES) == ["agent_deit_base", "agent_deit_small", "agent_deit_small_448", "agent_deit_tiny"]


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_official_fixture_parity(backend):
    meta, tensors, sd = load_fixture("agent_deit_a")
    model = visionzoo.from_official("agent_deit", meta["constructor_kwargs"], sd)
    assert visionzoo.count_params(model) == meta["num_params"]
    with visionzoo.use_backend(backend):
        assert_matches_fixture(model, tensors)


def test_official_fixture_through_checkpoint_path(tmp_path):
    """The official training script's ``{"model": ...}`` wrapping, detected by create_model; the converted keys
    are visionzoo's and convert again to themselves."""
    meta, tensors, sd = load_fixture("agent_deit_a")
    torch.save({"model": sd}, tmp_path / "agent_deit.pth")
    model = visionzoo.create_model("agent_deit_small", checkpoint_path=tmp_path / "agent_deit.pth", **SMALL)
    assert model.num_classes == 10
    assert_matches_fixture(model, tensors)
    own = model.state_dict()
    again = agent_deit.checkpoint_filter_fn(own, model)
    assert list(again) == list(own) and all(again[k] is own[k] for k in own)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_official_key_listing_converts(name):
    assert_listing_converts(name, name)


def test_224_listing_loads_into_the_448_model():
    """agent_deit_small's keys fit agent_deit_small_448 once pos_embed (1 + 14 x 14 -> 1 + 28 x 28) and the agent
    biases (14 -> 28) are resized: the official fine-tune starts from the 224 checkpoint."""
    model = visionzoo.create_model("agent_deit_small_448", device="meta")
    listing = official_keys("agent_deit_small")["state_dict"]
    fake = {k: torch.empty(shape, device="meta") for k, shape in listing.items()}
    converted = agent_deit.checkpoint_filter_fn(fake, model)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in
                                                                 model.state_dict().items()}


def _official_pos_embed(v: torch.Tensor, length: int) -> torch.Tensor:
    """``utils.load_pretrained``'s ``pos_embed`` branch, transcribed (leading non-square part kept, the square
    grid bicubically resized)."""
    (_, l1, c), s1, s2 = v.shape, int(v.shape[1] ** 0.5), int(length ** 0.5)
    i, j = l1 - s1 ** 2, length - s2 ** 2
    grid = F.interpolate(v[:, i:].reshape(-1, s1, s1, c).permute(0, 3, 1, 2), size=(s2, s2), mode="bicubic")
    return torch.cat([v[:, :j], grid.permute(0, 2, 3, 1).flatten(1, 2)], 1)


def test_224_checkpoint_at_448_resizes_as_the_official_fine_tuning(tmp_path):
    """The fixture's 224 weights loaded into the same layout built for 448: pos_embed and the agent biases equal
    the official loader's resizing, everything else is copied; the 224 model run at 448 (it resizes both on
    the fly, the same way) gives the same logits as the 448 model."""
    meta, _, sd = load_fixture("agent_deit_a")
    torch.save(sd, tmp_path / "agent_deit_224.pth")
    model = visionzoo.create_model("agent_deit_small", checkpoint_path=tmp_path / "agent_deit_224.pth",
                                   img_size=448, **SMALL).eval()
    own = model.state_dict()
    assert own["pos_embed"].shape == (1, 1 + 28 * 28, 48)
    assert own["stages.3.blocks.0.attn.wa_bias"].shape == (1, 3, 1, 28, 16)
    renamed = agent_deit._official(sd, own, depth=4)
    expected = official_resize({k: v for k, v in renamed.items() if k != "pos_embed"}, own)
    expected["pos_embed"] = _official_pos_embed(renamed["pos_embed"], own["pos_embed"].shape[1])
    assert set(expected) == set(own)
    for k, v in expected.items():
        torch.testing.assert_close(own[k], v, atol=1e-6, rtol=1e-6, msg=lambda m: f"{k}: {m}")
    at_224 = visionzoo.from_official("agent_deit", meta["constructor_kwargs"], sd)
    x = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        torch.testing.assert_close(at_224(x), model(x), atol=1e-4, rtol=1e-4)


def _plain_agent_attention(attn: AgentAttnCls, x: torch.Tensor) -> torch.Tensor:
    """The official ``AgentAttention.forward`` of ``agent_deit.py`` written out (square build-time map only)."""
    b, n, c = x.shape
    h = w = int((n - 1) ** 0.5)
    heads, hd, agents = attn.num_heads, c // attn.num_heads, attn.agent_num
    q, k, v = attn.qkv(x).reshape(b, n, 3, c).permute(2, 0, 1, 3)
    a = nn.AdaptiveAvgPool2d(attn.pool_size)(q[:, 1:].reshape(b, h, w, c).permute(0, 3, 1, 2))
    a = a.reshape(b, c, -1).permute(0, 2, 1)
    q, k, v = (t.reshape(b, n, heads, hd).permute(0, 2, 1, 3) for t in (q, k, v))
    a = a.reshape(b, agents, heads, hd).permute(0, 2, 1, 3)
    pb = F.interpolate(attn.an_bias, size=(h, w), mode="bilinear").reshape(1, heads, agents, -1)
    pb = pb + (attn.ah_bias + attn.aw_bias).reshape(1, heads, agents, -1)
    pb = torch.cat([attn.ac_bias.repeat(b, 1, 1, 1), pb.repeat(b, 1, 1, 1)], -1)
    agent_v = ((a * attn.scale) @ k.transpose(-2, -1) + pb).softmax(-1) @ v
    ab = F.interpolate(attn.na_bias, size=(h, w), mode="bilinear").reshape(1, heads, agents, -1).permute(0, 1, 3, 2)
    ab = ab + (attn.ha_bias + attn.wa_bias).reshape(1, heads, -1, agents)
    ab = torch.cat([attn.ca_bias.repeat(b, 1, 1, 1), ab.repeat(b, 1, 1, 1)], -2)
    out = (((q * attn.scale) @ a.transpose(-2, -1) + ab).softmax(-1) @ agent_v).transpose(1, 2).reshape(b, n, c)
    v_ = v[:, :, 1:].transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
    out[:, 1:] = out[:, 1:] + attn.dwc(v_).permute(0, 2, 3, 1).reshape(b, n - 1, c)
    return attn.proj(out)


def test_class_token_agent_attention_matches_the_official_formulation():
    """Non-zero class-token biases matter (first agents' column, first query row); the class token is not pooled
    and gets no dwc; gradients reach ac_bias / ca_bias; cached biases follow an in-place edit of ac_bias."""
    torch.manual_seed(0)
    attn = AgentAttnCls(24, 2, map_size=(6, 6), agent_num=4).eval()
    for name in attn.bias_names:
        nn.init.normal_(getattr(attn, name), std=0.5)
    x = torch.randn(2, 37, 24)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, (6, 6)), _plain_agent_attention(attn, x), atol=1e-5, rtol=1e-5)
        attn.ac_bias.add_(1.0)  # the bias cache is stamped with the class-token biases too
        torch.testing.assert_close(attn(x, (6, 6)), _plain_agent_attention(attn, x), atol=1e-5, rtol=1e-5)
    attn.train()
    attn(x, (6, 6)).sum().backward()
    assert attn.ac_bias.grad.abs().sum() > 0 and attn.ca_bias.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="1 \\+ H \\* W"):
        attn(x, (5, 7))


def test_class_token_agent_attention_any_map():
    """Non-square maps other than the build size run (biases interpolated, agents pooled from the 5 x 8 map)."""
    torch.manual_seed(0)
    attn = AgentAttnCls(24, 2, map_size=(6, 6), agent_num=9).eval()
    x = torch.randn(1, 1 + 5 * 8, 24)
    with torch.no_grad():
        out = attn(x, (5, 8))
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name,agents,agent_blocks,side", [
    ("agent_deit_tiny", 49, 12, 14), ("agent_deit_small", 49, 12, 14), ("agent_deit_base", 81, 4, 14),
    ("agent_deit_small_448", 49, 12, 28)])
def test_structure_agent_layer_norms(name, agents, agent_blocks, side):
    """Agent-DeiT-B: 4 agent blocks then 8 softmax blocks (timm Attention, official keys qkv / proj); every
    LayerNorm eps 1e-6 (the fixture cannot see an eps); biases sized by the build-time patch grid; 12 blocks in
    4 levels of 3 at stride 16; no norm on the patch embedding."""
    model = visionzoo.create_model(name, device="meta")
    blocks = [blk for stage in model.stages for blk in stage.blocks]
    assert [len(s.blocks) for s in model.stages] == [3, 3, 3, 3] and len(blocks) == 12
    assert [f["reduction"] for f in model.feature_info] == [16] * 4
    assert model.stem.proj.kernel_size == (16, 16) and isinstance(model.stem.norm, nn.Identity)
    assert model.norm.eps == 1e-6 and model.pos_embed.shape == (1, 1 + side * side, model.cfg.embed_dim)
    for i, blk in enumerate(blocks):
        assert blk.norm1.eps == blk.norm2.eps == 1e-6
        if i < agent_blocks:
            assert type(blk.attn) is AgentAttnCls and blk.attn.agent_num == agents
            assert blk.attn.ah_bias.shape[3] == side and blk.attn.ac_bias.shape == (1, model.cfg.num_heads, agents, 1)
        else:
            assert type(blk.attn) is agent_deit.SoftmaxAttn and isinstance(blk.attn, Attention)


def test_agents_follow_the_official_stage_map():
    """Block i takes agent_num[{0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3}[i // 2]] (official ``stage_num``)."""
    model = visionzoo.create_model("agent_deit_tiny", agent_num=(4, 9, 16, 25), device="meta")
    got = [blk.attn.agent_num for stage in model.stages for blk in stage.blocks]
    assert got == [4, 4, 9, 9, 16, 16, 16, 16, 16, 16, 25, 25]


def test_head_pooling_options():
    """'token' (official) reads the class token; 'avg' the mean patch token; forward_features is the token
    sequence [B, C, 1, 1 + N] with the class token first."""
    model = visionzoo.create_model("agent_deit_tiny", **SMALL, num_classes=0).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 48, 1, 1 + 4 * 5)
        torch.testing.assert_close(model(x), feats[:, :, 0, 0])
        model.reset_classifier(0, "avg")
        torch.testing.assert_close(model(x), feats[:, :, 0, 1:].mean(-1))
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(0, "max")


def test_from_official_arguments():
    meta, _, _ = load_fixture("agent_deit_a")
    kw = meta["constructor_kwargs"]
    as_string = visionzoo.from_official("agent_deit", {**kw, "agent_num": "9-16-49-49"})  # models/build.py's split
    assert as_string.cfg == visionzoo.from_official("agent_deit", kw).cfg
    base = visionzoo.from_official("agent_deit", {**kw, "agent_layer": 2})
    softmax = agent_deit.SoftmaxAttn
    assert [type(s.blocks[0].attn) for s in base.stages] == [AgentAttnCls, AgentAttnCls, softmax, softmax]
    with pytest.raises(NotImplementedError, match="distilled"):
        visionzoo.from_official("agent_deit", {**kw, "distilled": True})
    with pytest.raises(TypeError, match="window_size"):
        visionzoo.from_official("agent_deit", {**kw, "window_size": 7})
    with pytest.raises(ValueError, match="agent_num"):
        visionzoo.from_official("agent_deit", {**kw, "agent_num": [9, 16]})


def test_any_input_size_train_and_eval():
    """Built for 224, run at 256, 320, 200x232 and 97x131 (pos_embed and agent biases interpolated, the input
    zero-padded to a multiple of 16): a training step reaches every parameter, eval logits are finite, the taps
    are the padded patch grid. Agent-DeiT-B's softmax blocks included."""
    model = visionzoo.create_model("agent_deit_base", num_classes=5, drop_path_rate=0.1, **SMALL, agent_layer=2)
    check_train_and_eval(model, [(256, 256), (320, 320), (200, 232), (97, 131)])


def test_simple_feature_pyramid(tmp_path):
    """feature_pyramid='simple': ViTDet's strides 4 / 8 / 16 / 32 from the last group's patch map (the stride-16
    level is that map); an official classifier checkpoint converts strictly into the pyramid model, the pyramid
    keeping its initialisation; features_only gives those levels."""
    meta, _, sd = load_fixture("agent_deit_a")
    model = visionzoo.create_model("agent_deit_small", feature_pyramid="simple", num_classes=10, **SMALL).eval()
    pyramid = {k: v.clone() for k, v in model.pyramid.state_dict().items()}
    model.load_state_dict(agent_deit.checkpoint_filter_fn({"model": sd}, model), strict=True)
    assert all(torch.equal(v, model.pyramid.state_dict()[k]) for k, v in pyramid.items())
    classifier = visionzoo.from_official("agent_deit", meta["constructor_kwargs"], sd)
    x = torch.randn(1, 3, 100, 76)
    with torch.no_grad():
        levels = model.forward_intermediates(x, intermediates_only=True)
        last = classifier.forward_intermediates(x, indices=[-1], intermediates_only=True)[0]
        torch.testing.assert_close(model(x), classifier(x))
    assert [lv.shape[-2:] for lv in levels] == [(28, 20), (14, 10), (7, 5), (4, 3)]
    torch.testing.assert_close(levels[2], last)
    features = visionzoo.create_model("agent_deit_small", features_only=True, feature_pyramid="simple", **SMALL)
    assert features.feature_info.reduction() == [4, 8, 16, 32] and features.feature_info.channels() == [12, 24, 48, 48]
    assert [o.shape[1:] for o in features(x)] == [(12, 28, 20), (24, 14, 10), (48, 7, 5), (48, 4, 3)]
    torch.save({"model": sd}, tmp_path / "agent_deit.pth")  # the official checkpoint into the feature model
    loaded = visionzoo.create_model("agent_deit_small", features_only=True, feature_pyramid="simple",
                                    checkpoint_path=tmp_path / "agent_deit.pth", **SMALL).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[2], last)
