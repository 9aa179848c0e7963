"""FLatten-PVTv2 (Han et al., *FLatten Transformer*, ICCV 2023; ``LeapLabTHU/FLatten-Transformer``):
``flatten_pvt_v2_b0`` ... ``flatten_pvt_v2_b4``.

Layout (official ``models/flatten_pvt_v2.py``, PVTv2 with every attention replaced): overlapping patch
embeds (7x7 s4 padding 3, then 3x3 s2 padding 1, each + LayerNorm eps 1e-5) open the stages; blocks
``x += attn(LN(x))``, ``x += mlp(LN(x))`` (LayerNorm eps 1e-6, MLP Linear -> depthwise 3x3 -> GELU ->
Linear) whose attention is focused linear attention over the whole map
(:class:`~visionzoo.blocks.focused_linear_attn.FocusedLinearAttn`, ``positional_encoding`` sized by the
stage's map of ``img_size``; the builder's ``la_sr_ratios='1111'``: no spatial reduction); every stage
closes with a LayerNorm (eps 1e-6) that is part of the stage, so stage taps are normed (timm's PVTv2
layout; the parity test applies the official ``norm{i}`` to the fixture's pre-norm block outputs);
the head averages the stage-4 normed tokens.

Any input size runs: the convs are zero-padded as in the official code and ``positional_encoding`` is
bilinearly interpolated to the runtime map. ``img_size`` (default 224) fixes the build-time maps.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ._base import pretrained_cfg
from ._hierarchical import BlockCfg, HierarchicalCfg, HierarchicalNet, StageCfg, StemCfg, per_stage
from ._registry import register_family
from .flatten_pvt import (PVT_ARGS, ORIGIN, PAPER, check_img_size, family_meta, focused_mixer, official_common,
                          official_filter, pvt_maps, tiny)

__all__ = ["FLattenPVTv2Cfg", "VARIANTS", "checkpoint_filter_fn"]


@dataclass(frozen=True)
class FLattenPVTv2Cfg:
    depths: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 320, 512)  # official embed_dims
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    mlp_ratios: tuple[float, ...] = (8, 8, 4, 4)
    #: spatial reduction of the linear attention's K/V per stage (official la_sr_ratios, '1111' as built)
    la_sr_ratios: tuple[int, ...] = (1, 1, 1, 1)
    focusing_factor: int = 3
    kernel_size: int = 5  # the depthwise conv on V
    qkv_bias: bool = True
    img_size: int = 224  # build-time input side: sizes positional_encoding
    norm_eps: float = 1e-6  # block and stage-closing LayerNorms (official norm_layer=partial(nn.LayerNorm, eps=1e-6))

    def __post_init__(self):
        per_stage(self, "depths", "widths", "num_heads", "mlp_ratios", "la_sr_ratios", heads="num_heads")
        check_img_size(self)
        self.arch()

    def arch(self) -> HierarchicalCfg:
        maps = pvt_maps(self.img_size, len(self.depths))
        stages = tuple(StageCfg(d, w, h, focused_mixer(m, self.focusing_factor, self.kernel_size, sr, self.qkv_bias),
                                BlockCfg(r, "dwconv_mlp", norm_eps=self.norm_eps))
                       for d, w, h, r, sr, m in zip(self.depths, self.widths, self.num_heads, self.mlp_ratios,
                                                    self.la_sr_ratios, maps))
        return HierarchicalCfg(stages, StemCfg("overlap_ln"), "overlap_ln", final_norm="none",
                               stage_norm="layernorm", stage_norm_eps=self.norm_eps)


_RULES = [
    (r"^patch_embed1\.", "stem."),
    (r"^patch_embed(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.downsample."),
    (r"^norm(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.norm."),
    (r"^block(\d)\.(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^head\.", "head.fc."),
]
checkpoint_filter_fn = official_filter(_RULES)
checkpoint_filter_fn.__doc__ = """visionzoo or official (``PyramidVisionTransformerV2`` of ``flatten_pvt_v2.py``, bare
or ``{"model": ...}``) keys -> visionzoo keys; ``q`` / ``kv`` merged into ``qkv``, ``positional_encoding``
of another ``img_size`` resized."""


def _official(kw: dict):
    """An official ``PyramidVisionTransformerV2(img_size=224, patch_size=16, in_chans=3, num_classes=1000,
    embed_dims, num_heads, mlp_ratios, qkv_bias=False, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
    drop_path_rate=0., norm_layer=nn.LayerNorm, depths, sr_ratios=[8, 4, 2, 1], la_sr_ratios='8421',
    num_stages=4, linear=False, focusing_factor=3, kernel_size=5, attn_type='LLLL')`` call. ``patch_size``
    is unused by the official model (the patch embeds are fixed 7x7 s4 and 3x3 s2)."""
    _, overrides, model_kwargs = official_common("flatten_pvt_v2", kw, PVT_ARGS | {"linear"}, dict(linear=False))
    return "flatten_pvt_v2_b1", overrides, model_kwargs


# ---- variants -----------------------------------------------------------------------------------
_B1 = FLattenPVTv2Cfg()
VARIANTS = {
    "flatten_pvt_v2_b0": dataclasses.replace(_B1, widths=(32, 64, 160, 256)),
    "flatten_pvt_v2_b1": _B1,
    "flatten_pvt_v2_b2": dataclasses.replace(_B1, depths=(3, 4, 6, 3)),
    "flatten_pvt_v2_b3": dataclasses.replace(_B1, depths=(3, 4, 18, 3)),
    "flatten_pvt_v2_b4": dataclasses.replace(_B1, depths=(3, 8, 27, 3)),
}
#: official top-1 (ImageNet-1k, 224) of the released weights (only FLatten-PVTv2-B0 was released)
_TOP1 = {"flatten_pvt_v2_b0": 71.1}

register_family(
    __name__, "flatten_pvt_v2", HierarchicalNet, VARIANTS,
    {n: pretrained_cfg(paper=PAPER, origin_url=ORIGIN, first_conv="stem.proj", load="the official checkpoint",
                       license="other") for n in VARIANTS},
    checkpoint_filter_fn, meta=family_meta(VARIANTS, _TOP1), official={"flatten_pvt_v2": _official},
    paper="FLatten-PVTv2 (focused linear attention)", tiny=tiny, aliases={"embed_dims": "widths"},
)
