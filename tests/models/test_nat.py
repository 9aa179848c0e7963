"""NAT / DiNAT / DiNAT_s / isotropic NAT, DiNAT and ViT-RPB: official parity, conversion, dilation rule."""
import dataclasses
import importlib.util

import pytest
import torch

import visionzoo
from visionzoo.blocks import GlobalRelPosAttn2d, NeighborhoodAttn2d
from visionzoo.blocks.neighborhood_attn import effective_dilation
from visionzoo.models import nat
from visionzoo.models._registry import FAMILIES, MODELS
from visionzoo.ops.neighborhood import na2d

from ._any_size import check_train_and_eval
from ..fixtures import assert_listing_converts, assert_matches_fixture, load_fixture, official_params

FAMILY_NAMES = [n for n in visionzoo.list_models() if MODELS[n].family in ("nat", "dinat_s", "nat_isotropic")]
HAS_CPU_BACKEND = importlib.util.find_spec("visionzoo.ops.neighborhood.cpu") is not None
BACKENDS = ["reference", pytest.param("auto", marks=pytest.mark.skipif(
    not HAS_CPU_BACKEND, reason="visionzoo/ops/neighborhood/cpu.py (the auto backend on CPU) does not exist yet"))]
#: official key listings whose file name differs from the registered name
LISTING = {"dinat_large_384_k11": "dinat_large_384_11x11"}


# ---- official parity -----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fixture", ["nat_a", "dinat_s_a"])
def test_official_fixture_parity(fixture, backend):
    meta, tensors, sd = load_fixture(fixture)
    model = visionzoo.from_official(meta["family"], meta["constructor_kwargs"], sd)
    assert visionzoo.count_params(model) == meta["num_params"]
    with visionzoo.use_backend(backend):
        assert_matches_fixture(model, tensors)


def test_official_fixture_through_checkpoint_path(tmp_path):
    """create_model(checkpoint_path=) detects the official layout; converted keys load back unchanged."""
    meta, tensors, sd = load_fixture("nat_a")
    path = tmp_path / "dinat.pth"
    torch.save(sd, path)
    model = visionzoo.create_model("dinat_mini", checkpoint_path=path, depths=(2, 2, 2, 1), embed_dim=16,
                                   num_heads=(1, 2, 4, 4), dilations=((1, 8), (1, 4), (2, 1), (1,)))
    assert model.num_classes == 10
    with visionzoo.use_backend("reference"):
        assert_matches_fixture(model, tensors)
    own = model.state_dict()
    again = nat.checkpoint_filter_fn(own, model)  # idempotent on visionzoo keys
    assert list(again) == list(own) and all(again[k] is own[k] for k in own)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_official_key_listing_converts(name):
    """Every key and shape of the full-size official model maps onto ours; parameter counts agree."""
    assert_listing_converts(LISTING.get(name, name), name)


def test_official_param_counts():
    counts = official_params()
    for name in FAMILY_NAMES:
        model = visionzoo.create_model(name, device="meta")
        assert visionzoo.count_params(model) == counts[MODELS[name].meta["official_params_key"]]["params"], name


_DIL = [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]
_OFFICIAL_CALLS = {  # registered name -> (official family, the official builder's constructor kwargs)
    "dinat_tiny": ("nat", dict(depths=[3, 4, 18, 5], num_heads=[2, 4, 8, 16], embed_dim=64, mlp_ratio=3,
                               drop_path_rate=0.2, kernel_size=7, dilations=_DIL)),
    "nat_small": ("nat", dict(depths=[3, 4, 18, 5], num_heads=[3, 6, 12, 24], embed_dim=96, mlp_ratio=2,
                              drop_path_rate=0.3, layer_scale=1e-5, kernel_size=7)),
    "dinat_large_384_k11": ("nat", dict(depths=[3, 4, 18, 5], num_heads=[6, 12, 24, 48], embed_dim=192, mlp_ratio=2,
                                        drop_path_rate=0.35, kernel_size=11, dilations=_DIL)),
    "dinat_s_large_384": ("dinat_s", dict(depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], embed_dim=192, mlp_ratio=4,
                                          drop_path_rate=0.35, kernel_size=7,
                                          dilations=[[1, 13], [1, 6], [1, 3] * 9, [1, 1]])),
    "dinat_isotropic_base": ("nat_isotropic", dict(embed_dim=768, depth=12, num_heads=24, kernel_size=7, dilation=2,
                                                   drop_path_rate=0.4)),
    "vitrpb_small": ("nat_isotropic", dict(embed_dim=384, depth=12, num_heads=12, kernel_size=None, dilation=None,
                                           layer="VisionTransformerLayer")),
}


@pytest.mark.parametrize("name", sorted(_OFFICIAL_CALLS))
def test_from_official_builds_the_registered_architecture(name):
    """The official builder's kwargs give the registered config, with per-block dilation lists equal to
    what the (cycled) registered patterns expand to."""
    family, kwargs = _OFFICIAL_CALLS[name]
    variant, overrides, model_kwargs = FAMILIES[MODELS[name].family].official[family](kwargs)
    cfg, ref = dataclasses.replace(MODELS[variant].cfg, **overrides), MODELS[name].cfg
    expand = lambda c: [[c.dilation(i, j) for j in range(d)] for i, d in enumerate(c.depths)]  # noqa: E731
    assert expand(cfg) == expand(ref)
    assert dataclasses.replace(cfg, dilations=None) == dataclasses.replace(ref, dilations=None)
    assert model_kwargs["drop_path_rate"] == kwargs.get("drop_path_rate", 0.1)


def test_from_official_rejects_unknown_arguments():
    with pytest.raises(TypeError, match="window_size"):
        visionzoo.from_official("nat", dict(embed_dim=16, mlp_ratio=3, depths=[1], num_heads=[1], window_size=7))


# ---- dilation rule -------------------------------------------------------------------------------
def _effective(model, size):
    """Per-block effective dilation (square maps) of a model at input ``size``."""
    maps = [-(-size // r) for r in model.cfg.reductions]  # ceil: stride-2 3x3 convs / padded patches
    return [[blk.attn.dilation_for(n, n)[0] for blk in stage.blocks] for n, stage in zip(maps, model.stages)]


def test_dilation_rule():
    assert effective_dilation((56, 56), (7, 7), (8, 8)) == (8, 8)
    assert effective_dilation((40, 13), (7, 7), (8, 8)) == (5, 1)  # max(1, min(d, n // k)) per axis
    assert effective_dilation((3, 100), (7, 7), (4, 2)) == (1, 2)
    tiny = visionzoo.create_model("dinat_tiny", device="meta")
    assert _effective(tiny, 224) == _DIL  # the official schedule, d = floor(map / 7)
    assert _effective(tiny, 384) == _DIL  # never grown beyond what the checkpoint was trained with
    assert _effective(tiny, 128) == [[1, 4, 1], [1, 2, 1, 2], [1] * 18, [1] * 5]
    assert _effective(visionzoo.create_model("dinat_large_384", device="meta"), 384) == \
        [[1, 13, 1], [1, 6, 1, 6], [1, 3] * 9, [1] * 5]
    attn = visionzoo.create_model("dinat_s_tiny", device="meta").stages[0].blocks[1].attn
    assert attn.dilation == (8, 8) and "dilation=8 (at forward, per axis: max(1, min(8, size // 7)))" in repr(attn)


def test_clamped_dilation_is_what_runs():
    """The block on a small map equals na2d called with the clamped dilation."""
    attn = NeighborhoodAttn2d(16, 2, 3, dilation=4, backend="reference").eval()
    x = torch.randn(2, 9, 14, 16)
    q, k, v = attn.qkv(x).reshape(2, 9, 14, 3, 2, 8).unbind(3)
    ref = attn.proj(na2d(q, k, v, 3, (3, 4), rpb=attn.rpb, backend="reference").reshape(2, 9, 14, 16))
    torch.testing.assert_close(attn(x), ref)


def test_backend_reaches_every_na_layer():
    model = visionzoo.create_model("dinat_s_tiny", backend="reference", device="meta")
    layers = [m for m in model.modules() if isinstance(m, NeighborhoodAttn2d)]
    assert len(layers) == 12 and all(m.backend == "reference" for m in layers)


def test_na_attn_drop_is_refused():
    with pytest.raises(ValueError, match="attn_drop"):
        NeighborhoodAttn2d(16, 2, 7, attn_drop=0.1)


# ---- ViT-RPB global attention ----------------------------------------------------------------------
def test_vitrpb_index_matches_official_layout():
    """Official buffer: flipud(fliplr(.)) of (query - key + L - 1) row-major into the (2L-1)^2 table."""
    L = 14
    ys, xs = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    raw = (ys[:, None] - ys[None, :] + L - 1) * (2 * L - 1) + (xs[:, None] - xs[None, :] + L - 1)
    attn = GlobalRelPosAttn2d(32, 2, L)
    assert torch.equal(attn.relative_position_index, torch.flip(raw, (0, 1)))


@pytest.mark.parametrize("size", [(14, 14), (9, 12)])
def test_vitrpb_is_neighborhood_attention_with_kernel_l(size):
    """Global attention with a (2L-1)^2 bias == neighborhood attention with kernel L on maps <= L."""
    L, (H, W) = 14, size
    glob = GlobalRelPosAttn2d(32, 2, L).eval()
    local = NeighborhoodAttn2d(32, 2, L, backend="reference").eval()
    local.load_state_dict({k: v for k, v in glob.state_dict().items() if k != "relative_position_index"})
    with torch.no_grad():
        glob.rpb.normal_()  # an informative bias
        local.rpb.copy_(glob.rpb)
    x = torch.randn(2, H, W, 32)
    torch.testing.assert_close(glob(x), local(x), atol=1e-5, rtol=1e-5)


def test_vitrpb_larger_map_resizes_table():
    attn = GlobalRelPosAttn2d(32, 2, 4)
    assert attn.bias(6, 3).shape == (2, 18, 18)
    out = attn(torch.randn(1, 6, 3, 32))
    out.sum().backward()
    assert out.shape == (1, 6, 3, 32) and attn.rpb.grad.abs().sum() > 0


# ---- any input size, train and eval ---------------------------------------------------------------
_SMALL = {  # reduced configs that still exercise dilation, layer scale and every stem/downsampler
    "dinat_base": dict(depths=(2, 2, 2, 1), embed_dim=16, num_heads=(1, 2, 4, 4)),
    "dinat_s_tiny": dict(depths=(2, 2, 2, 1), embed_dim=16, num_heads=(1, 2, 4, 4)),
    "dinat_isotropic_small": dict(depths=(2, 1, 1), num_heads=(2, 2, 2), embed_dim=32,
                                  dilations=((1, 2), (1,), (2,))),
    "vitrpb_small": dict(depths=(1, 1, 1), num_heads=(2, 2, 2), embed_dim=32),
}


@pytest.mark.parametrize("name", sorted(_SMALL))
def test_any_input_size_train_and_eval(name):
    model = visionzoo.create_model(name, num_classes=5, drop_path_rate=0.1, **_SMALL[name])
    check_train_and_eval(model, [(32, 32), (200, 232), (256, 256)])
