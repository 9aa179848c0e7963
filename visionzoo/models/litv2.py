"""LITv2 (Pan, Cai, Zhuang, *Fast Vision Transformers with HiLo Attention*, NeurIPS 2022; ``ziplab/LITv2``):
``litv2_small`` / ``medium`` / ``base`` / ``base_384`` and the released alpha ablations of LITv2-S
(``litv2_small_alpha0``, ``_alpha0_5``, ``_alpha1``).

Layout (official ``classification/models/litv2.py``): patch embed 4x4 s4 conv + LayerNorm; stages
1-2 (``local_ws`` 0) are ConvFFN blocks only, ``x += DWMlp(LN(x))`` with no ``norm1`` and no attention
(the builder's ``'none'`` mixer); stage 3 HiLo with ``s = 2``, stage 4 ``s = 1`` (plain MSA, all
heads Lo-Fi) (:class:`~visionzoo.blocks.hilo_attn.HiLoAttn`), every MLP Linear -> depthwise 3x3 ->
GELU -> Linear (:class:`~visionzoo.blocks.DWConvMlp`); deformable token merging between stages
(DCN 2x2 s2 -> BN -> GELU, on ``torchvision.ops.deform_conv2d``); final LayerNorm, mean, Linear.
LayerNorm eps 1e-5 throughout. The official DTM closes a stage, here it opens the next (timm layout),
so stage ``i``'s output is the official ``layers.{i}.blocks.{last}`` tap.

Any input size works; the official classification code asserts the input equals ``img_size`` and
that maps are square and divisible by ``s`` and 2. Here the patch embed pads to a multiple of 4,
DTM pads odd maps to even, and HiLo masks the padding of partial windows
(:mod:`visionzoo.blocks.hilo_attn` says how that differs from the official detection backbone).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import convert
from ._base import pretrained_cfg
from ._hierarchical import BlockCfg, HierarchicalCfg, HierarchicalNet, MixerCfg, StageCfg, StemCfg, per_stage
from ._registry import register_family

__all__ = ["LITv2Cfg", "VARIANTS", "checkpoint_filter_fn"]


@dataclass(frozen=True)
class LITv2Cfg:
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    embed_dim: int = 96  # stage 0 width; doubled by every DTM
    mlp_ratio: float = 4.0
    alpha: float = 0.9  # fraction of Lo-Fi heads
    #: HiLo window s per stage; 0: no attention (ConvFFN blocks), 1: plain MSA
    local_ws: tuple[int, ...] = (0, 0, 2, 1)
    qkv_bias: bool = True
    qk_scale: float | None = None
    patch_size: int = 4
    patch_norm: bool = True

    def __post_init__(self):
        per_stage(self, "depths", "num_heads", "local_ws", heads="num_heads")
        self.arch()

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))

    def arch(self) -> HierarchicalCfg:
        stages = []
        for depth, width, heads, ws in zip(self.depths, self.widths, self.num_heads, self.local_ws):
            mixer = MixerCfg("none") if ws == 0 else MixerCfg("hilo", dict(
                window_size=ws, alpha=self.alpha, qkv_bias=self.qkv_bias, qk_scale=self.qk_scale))
            stages.append(StageCfg(depth, width, heads, mixer, BlockCfg(self.mlp_ratio, "dwconv_mlp")))
        return HierarchicalCfg(tuple(stages), StemCfg("patch", self.patch_size, self.patch_norm), "dtm")


# ---- checkpoint conversion ----------------------------------------------------------------------
_RULES = [
    (r"^patch_embed\.", "stem."),
    (r"^layers\.(\d+)\.downsample\.norm_layer\.", lambda m: f"stages.{int(m.group(1)) + 1}.downsample.norm."),
    (r"^layers\.(\d+)\.downsample\.", lambda m: f"stages.{int(m.group(1)) + 1}.downsample."),
    (r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^head\.", "head.fc."),
]


def checkpoint_filter_fn(state_dict, model: HierarchicalNet):
    """visionzoo or official (``LITv2``, bare or ``{"model": ...}``) keys -> visionzoo keys (values unchanged)."""
    return convert.remap(state_dict, model, {"official": lambda sd: convert.rename(sd, _RULES)})


def _official(kw: dict):
    """An official ``LITv2(img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96, depths,
    num_heads, mlp_ratio=4., qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
    drop_path_rate=0.1, norm_layer=nn.LayerNorm, ape=False, patch_norm=True, use_checkpoint=False,
    has_msa=[0, 0, 1, 1], alpha=0.5, local_ws=None)`` call. ``img_size`` only fixes the official input
    size (any size runs here); ``attn_drop_rate`` is accepted and, as in the official HiLo, unused."""
    kw = convert.check_official_kwargs("litv2", kw, {
        "img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depths", "num_heads", "mlp_ratio",
        "qkv_bias", "qk_scale", "drop_rate", "attn_drop_rate", "drop_path_rate", "norm_layer", "ape", "patch_norm",
        "use_checkpoint", "has_msa", "alpha", "local_ws"}, layernorm_eps=1e-5)
    if kw.get("ape", False):
        raise NotImplementedError("from_official('litv2'): ape=True (an absolute position embedding the official "
                                  "LITv2 never builds) is not implemented")
    depths = tuple(kw.get("depths", (2, 2, 6, 2)))
    has_msa = tuple(kw.get("has_msa", (0, 0, 1, 1)))
    local_ws = kw.get("local_ws")
    if local_ws is None or len(local_ws) != len(depths) or len(has_msa) != len(depths):
        raise ValueError(f"from_official('litv2'): local_ws and has_msa need one entry per stage, got "
                         f"local_ws={local_ws}, has_msa={has_msa}, depths={depths}")
    overrides = dict(depths=depths, num_heads=tuple(kw.get("num_heads", (3, 6, 12, 24))),
                     embed_dim=int(kw.get("embed_dim", 96)), mlp_ratio=float(kw.get("mlp_ratio", 4.0)),
                     alpha=float(kw.get("alpha", 0.5)), qkv_bias=bool(kw.get("qkv_bias", True)),
                     qk_scale=kw.get("qk_scale"), patch_size=int(kw.get("patch_size", 4)),
                     patch_norm=bool(kw.get("patch_norm", True)),
                     local_ws=tuple(int(ws) if msa else 0 for ws, msa in zip(local_ws, has_msa)))
    model_kwargs = dict(num_classes=kw.get("num_classes", 1000), in_chans=kw.get("in_chans", 3),
                        drop_path_rate=kw.get("drop_path_rate", 0.1), proj_drop_rate=kw.get("drop_rate", 0.0))
    return "litv2_small", overrides, model_kwargs


# ---- variants -----------------------------------------------------------------------------------
_SMALL = LITv2Cfg()
_BASE = LITv2Cfg(depths=(2, 2, 18, 2), embed_dim=128, num_heads=(4, 8, 16, 32))
VARIANTS = {
    "litv2_small": _SMALL,
    "litv2_medium": dataclasses.replace(_SMALL, depths=(2, 2, 18, 2)),
    "litv2_base": _BASE,
    "litv2_base_384": _BASE,
    "litv2_small_alpha0": dataclasses.replace(_SMALL, alpha=0.0),
    "litv2_small_alpha0_5": dataclasses.replace(_SMALL, alpha=0.5),
    "litv2_small_alpha1": dataclasses.replace(_SMALL, alpha=1.0),
}
#: name -> (official_params.json key, official top-1, where it comes from)
_FACTS = {
    "litv2_small": ("litv2_small", 82.0, "LITv2 README (ImageNet-1k, 224)"),
    "litv2_medium": ("litv2_medium", 83.3, "LITv2 README (ImageNet-1k, 224)"),
    "litv2_base": ("litv2_base", 83.6, "LITv2 README (ImageNet-1k, 224)"),
    "litv2_base_384": ("litv2_base_384", 84.7, "LITv2 README (ImageNet-1k, 384)"),
    "litv2_small_alpha0": ("litv2_small_alpha0.0", 81.16, "LITv2 README alpha ablation (ImageNet-1k, 224)"),
    "litv2_small_alpha0_5": ("litv2_small_alpha0.5", 81.88, "LITv2 README alpha ablation (ImageNet-1k, 224)"),
    "litv2_small_alpha1": ("litv2_small_alpha1.0", 81.89, "LITv2 README alpha ablation (ImageNet-1k, 224)"),
}
PAPER = ("Fast Vision Transformers with HiLo Attention", "arXiv:2205.13213")


def tiny(cfg: LITv2Cfg) -> dict:
    """16..128 wide, one block per stage, head dim 16; keeps the variant's alpha and windows."""
    return dict(depths=(1, 1, 1, 1), embed_dim=16, num_heads=(1, 2, 4, 8))


register_family(
    __name__, "litv2", HierarchicalNet, VARIANTS,
    {n: pretrained_cfg(paper=PAPER, origin_url="https://github.com/ziplab/LITv2", first_conv="stem.proj",
                       load="the official checkpoint", size=384 if n.endswith("_384") else 224,
                       crop_pct=1.0 if n.endswith("_384") else 0.875) for n in VARIANTS},
    checkpoint_filter_fn,
    meta={n: dict(official_params_key=f[0], top1=f[1], top1_source=f[2]) for n, f in _FACTS.items()},
    official={"litv2": _official}, paper="LITv2 (HiLo attention)", tiny=tiny,
)
