"""FLatten-PVT (Han et al., *FLatten Transformer: Vision Transformer using Focused Linear Attention*, ICCV 2023;
``LeapLabTHU/FLatten-Transformer``): ``flatten_pvt_tiny`` / ``small`` / ``medium`` / ``large``.

Layout (official ``models/flatten_pvt.py``, PVT v1 with every attention replaced): a 4x4 s4 patch conv +
LayerNorm (eps 1e-5) opens stage 1, a 2x2 s2 patch conv + LayerNorm opens stages 2-4; each stage adds its
absolute position embedding ``pos_embed`` (``[1, h*w, C]`` for the map of ``img_size``), then blocks
``x += attn(LN(x))``, ``x += mlp(LN(x))`` (LayerNorm eps 1e-6, MLP Linear -> GELU -> Linear) whose
attention is focused linear attention over the whole map
(:class:`~visionzoo.blocks.focused_linear_attn.FocusedLinearAttn`: focusing factor 3, 5x5 depthwise conv
on V shared across heads, a learnable ``positional_encoding`` on K of the stage's map). The official
builder passes ``la_sr_ratios='1111'`` (no spatial reduction in the linear attention; the model
function's ``sr_ratios`` only apply to softmax 'S' stages, which no released configuration uses). The
head averages the stage-4 tokens; the official model owns a final ``norm`` that its forward never
applies (commented out upstream): it is kept as unapplied state (exact parameter count, strict
loading) and the computation stays the official one.

``img_size`` (default 224) fixes the build-time maps, i.e. the shapes of the resolution-dependent
``pos_embed`` and ``positional_encoding`` parameters (official shapes, so checkpoints load as they
are). Any other input size runs: the patch convs zero-pad to a multiple of their stride (the official
layers drop the remainder) and both position tables are bilinearly interpolated to the map
(``align_corners=False``, the official ``_get_pos_embed``). Checkpoints of another ``img_size`` get their
tables resized at load time as the official fine-tuning loader does (``positional_encoding`` bicubic;
``pos_embed``, which that loader leaves alone, bilinear as the forward interpolates it).

Shared with :mod:`~visionzoo.models.flatten_pvt_v2` and :mod:`~visionzoo.models.flatten_swin`: the PVT
hyperparameters (:class:`FocusedPVTCfg`), the 'L' mixer config (:func:`focused_mixer`), PVT's build-time
maps (:func:`pvt_maps`) and the official PVT arguments (:func:`official_common`); the checkpoint
converters are :mod:`~visionzoo.models._pvt_swin_convert`'s.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


from .. import convert
from ._base import pretrained_cfg
from ._pvt_swin_convert import PVT_POS_RULE, PVT_RULES, official_filter
from ._hierarchical import BlockCfg, HierarchicalCfg, HierarchicalNet, MixerCfg, StageCfg, StemCfg, per_stage
from ._registry import register_family

__all__ = ["FocusedPVTCfg", "FLattenPVTCfg", "VARIANTS", "checkpoint_filter_fn", "focused_mixer", "pvt_maps",
           "official_common", "register_flatten", "PVT_ARGS", "PAPER", "ORIGIN"]

PAPER = ("FLatten Transformer: Vision Transformer using Focused Linear Attention", "arXiv:2308.00442")
ORIGIN = "https://github.com/LeapLabTHU/FLatten-Transformer"


def focused_mixer(map_size: int, focusing_factor: int, kernel_size: int, sr_ratio: int = 1,
                  qkv_bias: bool = True) -> MixerCfg:
    """The 'L' token mixer: focused linear attention over a ``map_size x map_size`` build-time map."""
    return MixerCfg("focused_linear", dict(map_size=(map_size, map_size), focusing_factor=focusing_factor,
                                           kernel_size=kernel_size, sr_ratio=sr_ratio, qkv_bias=qkv_bias))


def pvt_maps(img_size: int, num_stages: int, stem_stride: int = 4) -> tuple[int, ...]:
    """PVT's build-time map side per stage, the official ``PatchEmbed`` arithmetic: ``img_size // stem_stride``,
    then ``(img_size // 2 ** (i + 1)) // 2``."""
    return tuple(img_size // stem_stride if i == 0 else (img_size // 2 ** (i + 1)) // 2 for i in range(num_stages))


def check_img_size(cfg) -> None:
    if not isinstance(cfg.img_size, int) or isinstance(cfg.img_size, bool) or cfg.img_size < 32:
        raise ValueError(f"{type(cfg).__name__}: img_size must be an int >= 32 (the build-time input side that "
                         f"sizes the position tables), got {cfg.img_size!r}")


@dataclass(frozen=True)
class FocusedPVTCfg:
    """The hyperparameters both FLatten PVT generations share (every stage 'L'); :class:`FLattenPVTCfg` and
    :class:`~visionzoo.models.flatten_pvt_v2.FLattenPVTv2Cfg` give the layout (``arch()``)."""
    depths: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 320, 512)  # official embed_dims
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    mlp_ratios: tuple[float, ...] = (8, 8, 4, 4)
    #: spatial reduction of the linear attention's K/V per stage (official la_sr_ratios, '1111' as built)
    la_sr_ratios: tuple[int, ...] = (1, 1, 1, 1)
    focusing_factor: int = 3
    kernel_size: int = 5  # the depthwise conv on V
    qkv_bias: bool = True
    img_size: int = 224  # build-time input side: sizes the position tables
    norm_eps: float = 1e-6  # block (and PVTv2 stage) LayerNorms: official norm_layer=partial(nn.LayerNorm, eps=1e-6)

    def __post_init__(self):
        per_stage(self, "depths", "widths", "num_heads", "mlp_ratios", "la_sr_ratios", heads="num_heads")
        check_img_size(self)
        self.arch()

    def arch(self) -> HierarchicalCfg:
        raise NotImplementedError(f"{type(self).__name__}.arch")

    def stages(self, maps: tuple[int, ...], mlp_layer: str, pos_embed: bool) -> tuple[StageCfg, ...]:
        """One 'L' stage per entry, sized by the build-time ``maps``; ``pos_embed``: PVT v1's per-stage table."""
        return tuple(StageCfg(d, w, h, focused_mixer(m, self.focusing_factor, self.kernel_size, sr, self.qkv_bias),
                              BlockCfg(r, mlp_layer, norm_eps=self.norm_eps), pos_embed=(m, m) if pos_embed else None)
                     for d, w, h, r, sr, m in zip(self.depths, self.widths, self.num_heads, self.mlp_ratios,
                                                  self.la_sr_ratios, maps))


@dataclass(frozen=True)
class FLattenPVTCfg(FocusedPVTCfg):
    patch_size: int = 4  # the first patch embed's conv (later stages: 2x2 s2)

    def arch(self) -> HierarchicalCfg:
        stages = self.stages(pvt_maps(self.img_size, len(self.depths), self.patch_size), "mlp", pos_embed=True)
        return HierarchicalCfg(stages, StemCfg("patch", self.patch_size), "patch_ln", final_norm="layernorm_unapplied")


# ---- checkpoint conversion ----------------------------------------------------------------------
checkpoint_filter_fn = official_filter(PVT_RULES + [PVT_POS_RULE])
checkpoint_filter_fn.__doc__ = """visionzoo or official (``PyramidVisionTransformer`` of ``flatten_pvt.py``, bare or
``{"model": ...}``) keys -> visionzoo keys; ``q`` / ``kv`` merged into ``qkv``, position tables of another
``img_size`` resized (``pos_embed`` bilinearly, ``positional_encoding`` bicubically)."""


def official_common(family: str, kw: dict, allowed: set, supported: dict | None = None) -> tuple[dict, dict, dict]:
    """The official arguments of both PVT families -> (checked kwargs, config overrides, model kwargs)."""
    kw = convert.check_official_kwargs(family, kw, allowed, supported)
    depths = tuple(kw.get("depths", (3, 4, 6, 3)))
    n = kw.get("num_stages", 4)
    if n != len(depths) or n != 4:
        raise NotImplementedError(f"from_official({family!r}): only num_stages=4 with four depths is implemented, "
                                  f"got num_stages={n}, depths={depths}")
    attn_type = kw.get("attn_type") or "LLLL"
    if attn_type != "L" * n:
        raise NotImplementedError(f"from_official({family!r}): only attn_type='LLLL' (focused linear attention in "
                                  f"every stage, every released configuration) is implemented, got {attn_type!r}")
    if kw.get("qk_scale") is not None:
        raise NotImplementedError(f"from_official({family!r}): qk_scale only affects softmax 'S' stages; got "
                                  f"{kw['qk_scale']!r} with attn_type {attn_type!r}")
    la = str(kw.get("la_sr_ratios", "8421"))
    if len(la) != n or not la.isdigit():
        raise ValueError(f"from_official({family!r}): la_sr_ratios must be {n} digits (e.g. '1111'), got {la!r}")
    overrides = dict(depths=depths, widths=tuple(kw.get("embed_dims", (64, 128, 256, 512))),
                     num_heads=tuple(kw.get("num_heads", (1, 2, 4, 8))),
                     mlp_ratios=tuple(kw.get("mlp_ratios", (4, 4, 4, 4))), la_sr_ratios=tuple(int(c) for c in la),
                     focusing_factor=kw.get("focusing_factor", 3), kernel_size=kw.get("kernel_size", 5),
                     qkv_bias=bool(kw.get("qkv_bias", False)), img_size=int(kw.get("img_size", 224)),
                     norm_eps=convert.official_layernorm_eps(family, kw.get("norm_layer")))
    model_kwargs = dict(num_classes=kw.get("num_classes", 1000), in_chans=kw.get("in_chans", 3),
                        drop_path_rate=kw.get("drop_path_rate", 0.0), proj_drop_rate=kw.get("drop_rate", 0.0),
                        attn_drop_rate=kw.get("attn_drop_rate", 0.0))
    return kw, overrides, model_kwargs


PVT_ARGS = {"img_size", "patch_size", "in_chans", "num_classes", "embed_dims", "num_heads", "mlp_ratios", "qkv_bias",
             "qk_scale", "drop_rate", "attn_drop_rate", "drop_path_rate", "norm_layer", "depths", "sr_ratios",
             "la_sr_ratios", "num_stages", "focusing_factor", "kernel_size", "attn_type"}


def _official(kw: dict):
    """An official ``PyramidVisionTransformer(img_size=224, patch_size=16, in_chans=3, num_classes=1000,
    embed_dims, num_heads, mlp_ratios, qkv_bias=False, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
    drop_path_rate=0., norm_layer=nn.LayerNorm, depths, sr_ratios=[8, 4, 2, 1], la_sr_ratios='8421',
    num_stages=4, focusing_factor=3, kernel_size=5, attn_type='LLLL')`` call (``flatten_pvt.py``; the
    ``flatten_pvt_*`` functions pass ``patch_size=4`` and the builder ``la_sr_ratios='1111'``).
    ``sr_ratios`` only applies to softmax 'S' stages (not implemented)."""
    kw, overrides, model_kwargs = official_common("flatten_pvt", kw, PVT_ARGS)
    overrides["patch_size"] = int(kw.get("patch_size", 16))
    return "flatten_pvt_tiny", overrides, model_kwargs


# ---- variants -----------------------------------------------------------------------------------
_TINY = FLattenPVTCfg()
VARIANTS = {
    "flatten_pvt_tiny": _TINY,
    "flatten_pvt_small": dataclasses.replace(_TINY, depths=(3, 4, 6, 3)),
    "flatten_pvt_medium": dataclasses.replace(_TINY, depths=(3, 4, 18, 3)),
    "flatten_pvt_large": dataclasses.replace(_TINY, depths=(3, 8, 27, 3)),
}
#: official top-1 (ImageNet-1k, 224) of the released weights (only FLatten-PVT-T was released)
_TOP1 = {"flatten_pvt_tiny": 77.8}


def tiny(cfg) -> dict:
    """16..64 wide, one block per stage, head dim 16 (kept at the variant's img_size: the position tables
    are interpolated at the contract tests' 64x64)."""
    return dict(depths=(1, 1, 1, 1), widths=(16, 32, 48, 64), num_heads=(1, 2, 3, 4))


def register_flatten(module: str, family: str, variants: dict, filter_fn, official, paper: str, top1: dict,
                     sizes: dict | None = None, tiny=tiny, official_names: dict | None = None, **extra) -> None:
    """Register a FLatten family: official facts (``top1``: name -> official README top-1, only for released
    weights; ``official_names``: name -> official model name where it differs, the ``official_params_key``),
    the ``official`` translator, hub configs at ``sizes.get(name, 224)``, the contract tests' ``tiny``."""
    sizes, names = sizes or {}, official_names or {}
    register_family(
        module, family, HierarchicalNet, variants,
        {n: pretrained_cfg(paper=PAPER, origin_url=ORIGIN, first_conv="stem.proj", load="the official checkpoint",
                           license="unknown", size=sizes.get(n, 224), crop_pct=1.0 if n in sizes else 0.875)
         for n in variants},
        filter_fn, official={family: official}, paper=paper, tiny=tiny,
        meta={n: dict(official_params_key=names.get(n, n), **({"official_name": names[n]} if n in names else {}),
                      **(dict(top1=top1[n], top1_source="FLatten-Transformer README") if n in top1 else {}))
              for n in variants}, **extra)


register_flatten(__name__, "flatten_pvt", VARIANTS, checkpoint_filter_fn, _official,
                 "FLatten-PVT (focused linear attention)", _TOP1, aliases={"embed_dims": "widths"})
