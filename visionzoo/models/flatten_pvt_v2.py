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

from ._hierarchical import HierarchicalCfg, StemCfg
from ._pvt_swin_convert import PVT_RULES, official_filter
from .flatten_pvt import PVT_ARGS, FocusedPVTCfg, official_common, pvt_maps, register_flatten

__all__ = ["FLattenPVTv2Cfg", "VARIANTS", "checkpoint_filter_fn"]


@dataclass(frozen=True)
class FLattenPVTv2Cfg(FocusedPVTCfg):
    def arch(self) -> HierarchicalCfg:
        stages = self.stages(pvt_maps(self.img_size, len(self.depths)), "dwconv_mlp", pos_embed=False)
        return HierarchicalCfg(stages, StemCfg("overlap_ln"), "overlap_ln", final_norm="none",
                               stage_norm="layernorm", stage_norm_eps=self.norm_eps)


checkpoint_filter_fn = official_filter(PVT_RULES + [
    (r"^norm(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.norm."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
])
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

register_flatten(__name__, "flatten_pvt_v2", VARIANTS, checkpoint_filter_fn, _official,
                 "FLatten-PVTv2 (focused linear attention)", _TOP1, aliases={"embed_dims": "widths"})
