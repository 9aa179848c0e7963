"""FLatten-PVT (v1) and FLatten-PVTv2: official fixture parity (from_official and checkpoint_path), official key
listings (and parameter counts), structure (eps, the unapplied final norm, normed PVTv2 stage taps), official
arguments, checkpoints of another img_size, any input size."""
import pytest
import torch
import torch.nn.functional as F

import visionzoo
from visionzoo.blocks.focused_linear_attn import FocusedLinearAttn
from visionzoo.models import flatten_pvt, flatten_pvt_v2
from visionzoo.models._registry import MODELS

from ._any_size import check_train_and_eval
from ..fixtures import assert_listing_converts, assert_matches_fixture, load_fixture

FAMILIES = {"flatten_pvt": flatten_pvt, "flatten_pvt_v2": flatten_pvt_v2}
NAMES = [n for n in visionzoo.list_models() if MODELS[n].family in FAMILIES]
#: registered name -> official key listing (tests/fixtures/official/keys)
LISTING = {"flatten_pvt_tiny": "flatten_pvt_t", "flatten_pvt_small": "flatten_pvt_s",
           "flatten_pvt_medium": "flatten_pvt_m", "flatten_pvt_large": "flatten_pvt_l",
           **{f"flatten_pvt_v2_b{i}": f"flatten_pvt_v2_b{i}" for i in range(5)}}
#: the fixtures' configuration ('a') as visionzoo overrides
SMALL = dict(depths=(1, 1, 2, 1), widths=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), num_classes=10)
VARIANT = {"flatten_pvt": "flatten_pvt_tiny", "flatten_pvt_v2": "flatten_pvt_v2_b1"}


def _normed_taps(tensors: dict, sd: dict) -> dict:
    """PVTv2 fixture taps are the last blocks' outputs before the official ``norm{i}``; our stage taps
    include the stage-closing norm (timm's PVTv2 layout), so the expected taps get the official norms."""
    out = dict(tensors)
    for i in range(4):
        x = tensors[f"stage.{i}"].permute(0, 2, 3, 1)
        y = F.layer_norm(x, x.shape[-1:], sd[f"norm{i + 1}.weight"], sd[f"norm{i + 1}.bias"], eps=1e-6)
        out[f"stage.{i}"] = y.permute(0, 3, 1, 2)
    return out


def _expected(family: str, tensors: dict, sd: dict) -> dict:
    return _normed_taps(tensors, sd) if family == "flatten_pvt_v2" else tensors


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_official_fixture_parity(family):
    meta, tensors, sd = load_fixture(f"{family}_a")
    model = visionzoo.from_official(family, meta["constructor_kwargs"], sd)
    assert visionzoo.count_params(model) == meta["num_params"]
    assert_matches_fixture(model, _expected(family, tensors, sd))


def test_pvt_v2_block_outputs_before_the_stage_norm():
    """The fixture's own taps (pre-norm block outputs), read from the last block of every stage."""
    meta, tensors, sd = load_fixture("flatten_pvt_v2_a")
    model = visionzoo.from_official("flatten_pvt_v2", meta["constructor_kwargs"], sd)
    got = {}
    for i, stage in enumerate(model.stages):
        stage.blocks.register_forward_hook(lambda m, a, out, i=i: got.__setitem__(i, out.permute(0, 3, 1, 2)))
    with torch.no_grad():
        model(tensors["input"].float())
    for i in range(4):
        torch.testing.assert_close(got[i], tensors[f"stage.{i}"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_official_fixture_through_checkpoint_path(family, tmp_path):
    meta, tensors, sd = load_fixture(f"{family}_a")
    torch.save({"model": sd}, tmp_path / "ckpt.pth")  # the official (Swin-style) training script's wrapping
    model = visionzoo.create_model(VARIANT[family], checkpoint_path=tmp_path / "ckpt.pth", **SMALL)
    assert_matches_fixture(model, _expected(family, tensors, sd))
    own = model.state_dict()
    again = FAMILIES[family].checkpoint_filter_fn(own, model)
    assert list(again) == list(own) and all(again[k] is own[k] for k in own)


@pytest.mark.parametrize("name", sorted(LISTING))
def test_official_key_listing_converts(name):
    """Every variant's official keys and shapes convert, and its parameter count is the official one."""
    assert len(NAMES) == len(LISTING)
    assert_listing_converts(LISTING[name], name)


def test_structure_and_eps():
    """LayerNorm eps 1e-6 in the blocks (and PVTv2's stage norms), 1e-5 in the patch embeds; 'L' mixers
    sized by the stage maps of img_size (56, 28, 14, 7 at 224); v1's pos_embed per stage; v1's final norm
    holds parameters but is not applied; PVTv2 has no final norm."""
    v1 = visionzoo.create_model("flatten_pvt_tiny", device="meta")
    v2 = visionzoo.create_model("flatten_pvt_v2_b0", device="meta")
    for model in (v1, v2):
        assert model.stem.norm.eps == 1e-5
        for i, (stage, m) in enumerate(zip(model.stages, (56, 28, 14, 7))):
            if i:
                assert stage.downsample.norm.eps == 1e-5
            for blk in stage.blocks:
                assert isinstance(blk.attn, FocusedLinearAttn) and blk.attn.map_size == (m, m)
                assert blk.norm1.eps == blk.norm2.eps == 1e-6
                assert tuple(blk.attn.positional_encoding.shape) == (1, m * m, blk.attn.dim)
    assert [tuple(s.pos_embed.shape[:2]) for s in v1.stages] == [(1, 3136), (1, 784), (1, 196), (1, 49)]
    assert all(s.pos_embed is None and s.norm.eps == 1e-6 for s in v2.stages)
    assert isinstance(v2.norm, torch.nn.Identity)
    assert sum(p.numel() for p in v1.norm.parameters()) == 2 * 512
    model = visionzoo.create_model("flatten_pvt_tiny", **SMALL).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, taps = model.forward_intermediates(x)
    torch.testing.assert_close(final, taps[-1])  # the final norm is not applied


def test_img_size_sizes_the_tables():
    model = visionzoo.create_model("flatten_pvt_v2_b0", img_size=256, device="meta")
    assert [s.blocks[0].attn.map_size for s in model.stages] == [(64, 64), (32, 32), (16, 16), (8, 8)]
    with pytest.raises(ValueError, match="img_size"):
        visionzoo.create_model("flatten_pvt_tiny", img_size=(224, 224), device="meta")


def _resized(table: torch.Tensor, side: int, mode: str) -> torch.Tensor:
    """The official fine-tuning loader's resize of a ``[1, n, C]`` table of a square map."""
    n = int(table.shape[1] ** 0.5)
    grid = table.permute(0, 2, 1).reshape(1, -1, n, n)
    return F.interpolate(grid, size=(side, side), mode=mode, align_corners=False).reshape(1, -1, side * side) \
        .permute(0, 2, 1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_checkpoint_of_another_img_size(family, tmp_path):
    """A 224 checkpoint loads strictly into a 256 model: ``positional_encoding`` resized bicubically (the official
    fine-tuning loader), v1's ``pos_embed`` bilinearly (what its forward does at another size)."""
    _, _, sd = load_fixture(f"{family}_a")
    torch.save(sd, tmp_path / "ckpt.pth")
    model = visionzoo.create_model(VARIANT[family], checkpoint_path=tmp_path / "ckpt.pth", img_size=256,
                                   **SMALL).eval()
    for i, side in enumerate((64, 32, 16, 8)):
        stage = model.stages[i]
        assert stage.blocks[0].attn.map_size == (side, side)
        want = _resized(sd[f"block{i + 1}.0.attn.positional_encoding"], side, "bicubic")
        torch.testing.assert_close(stage.blocks[0].attn.positional_encoding, want)
        if family == "flatten_pvt":
            torch.testing.assert_close(stage.pos_embed, _resized(sd[f"pos_embed{i + 1}"], side, "bilinear"))
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 256, 256))).all()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_from_official_arguments(family):
    meta, _, _ = load_fixture(f"{family}_a")
    kw = meta["constructor_kwargs"]
    with pytest.raises(NotImplementedError, match="attn_type"):
        visionzoo.from_official(family, {**kw, "attn_type": "LLSS"})
    with pytest.raises(TypeError, match="window_size"):
        visionzoo.from_official(family, {**kw, "window_size": 7})
    with pytest.raises(ValueError, match="la_sr_ratios"):
        visionzoo.from_official(family, {**kw, "la_sr_ratios": "11"})
    with pytest.raises(NotImplementedError, match="norm_layer"):
        visionzoo.from_official(family, {**kw, "norm_layer": "BatchNorm2d"})
    model = visionzoo.from_official(family, {**kw, "la_sr_ratios": "2111"})  # spatially reduced K/V in stage 1
    attn = model.stages[0].blocks[0].attn
    assert attn.sr_ratio == 2 and {"q", "kv", "sr", "norm"} <= {k.split(".")[0] for k in attn.state_dict()}
    assert tuple(attn.positional_encoding.shape) == (1, 28 * 28, 16)
    assert "qkv" in dict(model.stages[1].blocks[0].attn.named_children())
    if family == "flatten_pvt_v2":
        with pytest.raises(NotImplementedError, match="linear"):
            visionzoo.from_official(family, {**kw, "linear": True})


@pytest.mark.parametrize("name", ["flatten_pvt_tiny", "flatten_pvt_v2_b0"])
def test_any_input_size_train_and_eval(name):
    """A 224 model at other sizes (position tables interpolated; v1's 2x2 patch convs pad odd maps)."""
    model = visionzoo.create_model(name, drop_path_rate=0.1, **{**SMALL, "num_classes": 5})
    check_train_and_eval(model, [(256, 256), (320, 320), (200, 232), (97, 131)])
