"""FLatten-CSWin: official fixture parity (from_official and checkpoint_path), official key listings (and parameter
counts), the stage layout ('L' global focused linear attention + LePE, 'S' stripes, global last stage), official
arguments, the 224 checkpoint in the 384 model, any input size, features_only."""
import pytest
import torch
import torch.nn.functional as F

import visionzoo
from visionzoo.blocks.cswin_attn import CrossShapedWindowAttn, FocusedLinearAttnLePE

from ._any_size import check_train_and_eval
from .test_agent_cswin import assert_official_checkpoint_loads
from ..fixtures import assert_listing_converts, assert_matches_fixture, load_fixture

LISTING = {"flatten_cswin_tiny": "flatten_cswin_t", "flatten_cswin_small": "flatten_cswin_s",
           "flatten_cswin_base": "flatten_cswin_b", "flatten_cswin_base_384": "flatten_cswin_b_384"}


def _small() -> dict:
    """The fixture's configuration ('a') as visionzoo overrides."""
    kw = load_fixture("flatten_cswin_a")[0]["constructor_kwargs"]
    return dict(depths=tuple(kw["depth"]), embed_dim=kw["embed_dim"], num_heads=tuple(kw["num_heads"]),
                num_classes=kw["num_classes"])


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_official_fixture_parity(backend):
    meta, tensors, sd = load_fixture("flatten_cswin_a")
    model = visionzoo.from_official("flatten_cswin", meta["constructor_kwargs"], sd)
    assert visionzoo.count_params(model) == meta["num_params"]
    assert model.cfg.attn_type == meta["constructor_kwargs"]["attn_type"]
    with visionzoo.use_backend(backend):
        assert_matches_fixture(model, tensors)


def test_official_fixture_through_checkpoint_path(tmp_path):
    assert_official_checkpoint_loads("flatten_cswin_a", "flatten_cswin_tiny", tmp_path, **_small())


@pytest.mark.parametrize("name", sorted(LISTING))
def test_official_key_listing_converts(name):
    """Every official key and shape maps strictly, the parameter count is the listing's (official_params.json's,
    under the official name in the registry metadata: the contract suite)."""
    assert_listing_converts(LISTING[name], name)


@pytest.mark.parametrize("name,split", [("flatten_cswin_small", 7), ("flatten_cswin_base_384", 12)])
def test_stage_layout(name, split):
    """'L' stages: focused linear attention + LePE over the build-time map (positional encoding sized by it); 'S'
    stage 3: stripes of the split, stage 4 global."""
    model = visionzoo.create_model(name, device="meta")
    side = model.cfg.img_size // 4
    for i, stage in enumerate(model.stages):
        for blk in stage.blocks:
            if i < 2:
                assert type(blk.attn) is FocusedLinearAttnLePE and blk.attn.map_size == (side >> i, side >> i)
                assert (blk.attn.kernel_size, blk.attn.focusing_factor) == (5, 3)
            else:
                assert type(blk.attn) is CrossShapedWindowAttn and blk.attn.global_attn == (i == 3)
                assert blk.attn.split_size == split


def test_from_official_arguments():
    meta, _, _ = load_fixture("flatten_cswin_a")
    kw = meta["constructor_kwargs"]
    mixed = visionzoo.from_official("flatten_cswin", {**kw, "attn_type": "LLMS1"})
    assert [type(b.attn) for b in mixed.stages[2].blocks] == [FocusedLinearAttnLePE, CrossShapedWindowAttn]
    odd = visionzoo.from_official("flatten_cswin", {**kw, "focusing_factor": 2, "kernel_size": 3})
    assert (odd.stages[0].blocks[0].attn.focusing_factor, odd.stages[0].blocks[0].attn.kernel_size) == (2, 3)
    with pytest.raises(NotImplementedError, match="la_split_size"):  # the constructor default: windowed 'L'
        visionzoo.from_official("flatten_cswin", {k: v for k, v in kw.items() if k != "la_split_size"})
    with pytest.raises(ValueError, match="attn_type"):
        visionzoo.from_official("flatten_cswin", {**kw, "attn_type": "LLAS"})
    with pytest.raises(TypeError, match="agent_num"):
        visionzoo.from_official("flatten_cswin", {**kw, "agent_num": [9, 16, 49, 49]})


def test_224_checkpoint_into_the_384_model(tmp_path):
    """The official fine-tuning start: positional encodings resized bicubically (56 -> 96, 28 -> 48), strict
    load, the model runs at 384."""
    _, _, sd = load_fixture("flatten_cswin_a")
    torch.save(sd, tmp_path / "ckpt.pth")
    model = visionzoo.create_model("flatten_cswin_base_384", checkpoint_path=tmp_path / "ckpt.pth", **_small()).eval()
    pe = sd["stage1.0.attns.0.positional_encoding"].permute(0, 2, 1).reshape(1, 16, 56, 56)
    want = F.interpolate(pe, size=(96, 96), mode="bicubic", align_corners=False).reshape(1, 16, -1).permute(0, 2, 1)
    torch.testing.assert_close(model.stages[0].blocks[0].attn.positional_encoding, want)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 384, 384))).all()


def test_any_input_size_train_and_eval():
    """A 224 model at 256, 320, 200x232 and 97x131 (positional encodings interpolated, stripes padded and masked):
    a training step reaches every parameter, eval logits are finite, the stage taps have the right shapes."""
    model = visionzoo.create_model("flatten_cswin_tiny", drop_path_rate=0.1, **{**_small(), "num_classes": 5})
    check_train_and_eval(model, [(256, 256), (320, 320), (200, 232), (97, 131)])


def test_features_only_four_levels():
    model = visionzoo.create_model("flatten_cswin_base_384", features_only=True, **_small()).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 200, 232))
    assert [f.shape[1] for f in feats] == [16, 32, 64, 128]
    assert [tuple(f.shape[2:]) for f in feats] == [(-(-200 // r), -(-232 // r)) for r in (4, 8, 16, 32)]
