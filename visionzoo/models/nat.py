"""NAT and DiNAT (Hassani et al., CVPR 2023; Hassani & Shi, 2022): hierarchical transformers of
(dilated) neighborhood attention layers. :class:`NATCfg` is also the config of DiNAT_s
(:mod:`.dinat_s`) and the isotropic models (:mod:`.nat_isotropic`); all are built by
:class:`~visionzoo.models._hierarchical.HierarchicalNet` (``NATCfg.arch()``).

Layout (official ``classification/nat.py``): ConvTokenizer = two 3x3 stride-2 convs with bias and
nothing between, then LayerNorm; levels of pre-norm NA layers (MLP ratio, optional layer scale);
ConvDownsampler (3x3 s2 conv without bias, C -> 2C, + LayerNorm) at the end of levels 0-2;
final LayerNorm, mean over tokens, Linear. Here the downsampler opens the next stage (timm
layout), so stage ``i``'s output is the official ``levels.{i}.blocks.{last}`` tap. Maps are
``[B, H, W, C]`` inside; every tensor returned is NCHW. LayerNorm eps 1e-5 throughout.

Dilation: ``NATCfg.dilations`` holds the configured dilations (the official ``dilations`` lists,
what the checkpoints were trained with); block ``j`` of stage ``i`` uses ``dilations[i][j % len]``
so a per-stage pattern also serves reduced depths. At forward time each layer uses, per axis,
``max(1, min(configured, n // kernel_size))`` on its ``n``-pixel map
(:class:`~visionzoo.blocks.NeighborhoodAttn2d`): identical to the official model wherever that
runs (``n >= kernel * dilation``), and DiNAT's own ``d = n // k`` rule where it would fail.

Any input size works: the stride-2 3x3 convs (padding 1) give ``ceil(n / 2)``; Swin-layout stems
pad to a multiple of the patch and PatchMerging pads odd maps, as the official code does.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


from .. import convert
from ._base import pretrained_cfg
from ._hierarchical import BlockCfg, HierarchicalCfg, HierarchicalNet, MixerCfg, StageCfg, StemCfg, per_stage
from ._registry import register_family

__all__ = ["NATCfg", "VARIANTS", "checkpoint_filter_fn"]


@dataclass(frozen=True)
class NATCfg:
    depths: tuple[int, ...] = (3, 4, 6, 5)
    num_heads: tuple[int, ...] = (2, 4, 8, 16)
    embed_dim: int = 64  # stage 0 width; doubled by every downsampler
    mlp_ratio: float = 3.0
    layer_scale: float | None = None
    #: the token mixer: neighborhood attention ('na', with ``kernel_size`` and ``dilations`` below) or
    #: global attention with a relative position bias (``MixerCfg("global_rpb", dict(table_size=14))``)
    mixer: MixerCfg = MixerCfg("na")
    kernel_size: int = 7
    #: configured dilation per stage, cycled over the stage's blocks; None: plain NA everywhere
    dilations: tuple[tuple[int, ...], ...] | None = None
    qkv_bias: bool = True
    qk_scale: float | None = None
    stem: StemCfg = StemCfg("nat")  # NAT ConvTokenizer | StemCfg("patch", stride, norm)
    downsample: str = "conv_ln"  # NAT ConvDownsampler | 'merge' (Swin PatchMerging) | 'none' (isotropic)

    def __post_init__(self):
        n = per_stage(self, "depths", "num_heads", heads="num_heads")
        if self.dilations is not None:
            object.__setattr__(self, "dilations", tuple(tuple(int(d) for d in s) for s in self.dilations))
        dil = self.dilations
        if dil is not None and (len(dil) != n or any(not s or min(s) < 1 for s in dil)):
            raise ValueError(f"NATCfg.dilations needs one non-empty tuple of positive ints per stage, got {dil}")
        self.arch()  # validates the stem / downsample / mixer kinds

    @property
    def widths(self) -> tuple[int, ...]:
        grow = self.downsample != "none"
        return tuple(self.embed_dim * (2 ** i if grow else 1) for i in range(len(self.depths)))

    @property
    def reductions(self) -> tuple[int, ...]:
        return self.arch().reductions

    def dilation(self, stage: int, block: int) -> int:
        """Configured dilation of ``block`` in ``stage``."""
        if self.dilations is None:
            return 1
        pattern = self.dilations[stage]
        return pattern[block % len(pattern)]

    def arch(self) -> HierarchicalCfg:
        stages = []
        for i, (depth, width, heads) in enumerate(zip(self.depths, self.widths, self.num_heads)):
            options = dict(self.mixer.options, qkv_bias=self.qkv_bias, qk_scale=self.qk_scale)
            cycle = {}
            if self.mixer.kind == "na":
                options.update(kernel_size=self.kernel_size, rpb=True)
                cycle = dict(dilation=self.dilations[i]) if self.dilations else {}
            stages.append(StageCfg(depth, width, heads, MixerCfg(self.mixer.kind, options, cycle),
                                   BlockCfg(self.mlp_ratio, layer_scale=self.layer_scale, norm_eps=1e-5)))
        return HierarchicalCfg(tuple(stages), self.stem, self.downsample, "layernorm", no_weight_decay=("*.rpb",))


# ---- checkpoint conversion ----------------------------------------------------------------------
def _official_rules(model: HierarchicalNet) -> list:
    rules = [(r"^patch_embed\.", "stem."), (r"^head\.", "head.fc."), (r"\.gamma([12])$", r".ls\1.gamma")]
    if model.cfg.downsample == "none":  # isotropic: one flat `layers.{j}` list, grouped into stages here
        where = [(i, j) for i, d in enumerate(model.cfg.depths) for j in range(d)]
        rules.append((r"^layers\.(\d+)\.", lambda m: "stages.{}.blocks.{}.".format(*where[int(m.group(1))])))
    else:  # NAT `levels.{i}`, DiNAT_s `layers.{i}`; their downsampler closes level i, ours opens stage i + 1
        rules += [(r"^(?:levels|layers)\.(\d+)\.downsample\.", lambda m: f"stages.{int(m.group(1)) + 1}.downsample."),
                  (r"^(?:levels|layers)\.(\d+)\.blocks\.", r"stages.\1.blocks.")]
    return rules


def checkpoint_filter_fn(state_dict, model: HierarchicalNet):
    """visionzoo or official (NAT/DiNAT ``levels``, DiNAT_s ``layers``, isotropic flat ``layers``) keys ->
    visionzoo keys. ``gamma1/2`` become ``ls1/2.gamma``; values are unchanged."""
    return convert.remap(state_dict, model, {"official": lambda sd: convert.rename(sd, _official_rules(model))})


# ---- official constructor calls -> visionzoo configs --------------------------------------------
def official_model_kwargs(kw: dict, drop_path_default: float) -> dict:
    """Official runtime arguments -> :class:`~visionzoo.models._hierarchical.HierarchicalNet` keyword arguments."""
    return dict(num_classes=kw.get("num_classes", 1000), in_chans=kw.get("in_chans", 3),
                drop_path_rate=kw.get("drop_path_rate", drop_path_default), proj_drop_rate=kw.get("drop_rate", 0.0),
                attn_drop_rate=kw.get("attn_drop_rate", 0.0))


def _official_nat(kw: dict):
    """``NAT(embed_dim, mlp_ratio, depths, num_heads, drop_path_rate=0.2, in_chans=3, kernel_size=7,
    dilations=None, num_classes=1000, qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
    norm_layer=nn.LayerNorm, layer_scale=None)`` (DiNAT is the same class)."""
    kw = convert.check_official_kwargs("nat", kw, {
        "embed_dim", "mlp_ratio", "depths", "num_heads", "drop_path_rate", "in_chans", "kernel_size", "dilations",
        "num_classes", "qkv_bias", "qk_scale", "drop_rate", "attn_drop_rate", "norm_layer", "layer_scale"},
        layernorm_eps=1e-5)
    scale = kw.get("layer_scale")
    dil = kw.get("dilations")
    overrides = dict(embed_dim=int(kw["embed_dim"]), mlp_ratio=float(kw["mlp_ratio"]), depths=tuple(kw["depths"]),
                     num_heads=tuple(kw["num_heads"]), kernel_size=int(kw.get("kernel_size", 7)),
                     dilations=None if dil is None else tuple(tuple(d) for d in dil),
                     # the official layer only honours a plain int/float layer_scale
                     layer_scale=float(scale) if type(scale) in (int, float) else None,
                     qkv_bias=bool(kw.get("qkv_bias", True)), qk_scale=kw.get("qk_scale"))
    return ("dinat_mini" if dil is not None else "nat_mini"), overrides, official_model_kwargs(kw, 0.2)


# ---- variants -----------------------------------------------------------------------------------
_DEPTHS = (3, 4, 18, 5)
_DIL_224 = ((1, 8), (1, 4), (1, 2), (1,))  # d = floor(map / 7) at 56/28/14/7, alternating with NA
_DIL_384 = ((1, 13), (1, 6), (1, 3), (1,))  # at 96/48/24/12
_MINI = NATCfg()
_TINY = NATCfg(depths=_DEPTHS)
_SMALL = NATCfg(depths=_DEPTHS, embed_dim=96, num_heads=(3, 6, 12, 24), mlp_ratio=2.0)
_BASE = NATCfg(depths=_DEPTHS, embed_dim=128, num_heads=(4, 8, 16, 32), mlp_ratio=2.0, layer_scale=1e-5)
_LARGE = NATCfg(depths=_DEPTHS, embed_dim=192, num_heads=(6, 12, 24, 48), mlp_ratio=2.0, dilations=_DIL_224)


def _dil(cfg: NATCfg, **kw) -> NATCfg:
    return dataclasses.replace(cfg, **{"dilations": _DIL_224, **kw})


VARIANTS = {
    "nat_mini": _MINI,
    "nat_tiny": _TINY,
    "nat_small": dataclasses.replace(_SMALL, layer_scale=1e-5),
    "nat_base": _BASE,
    "dinat_mini": _dil(_MINI),
    "dinat_tiny": _dil(_TINY),
    "dinat_small": _dil(_SMALL),  # no layer scale, unlike nat_small
    "dinat_base": _dil(_BASE),
    "dinat_large": _LARGE,
    "dinat_large_384": _dil(_LARGE, dilations=_DIL_384),
    "dinat_large_384_k11": _dil(_LARGE, kernel_size=11),
}

#: name -> (official_params.json key, official top-1, where it comes from)
_FACTS = {
    "nat_mini": ("nat_mini", 81.8, "NAT README (ImageNet-1k, 224)"),
    "nat_tiny": ("nat_tiny", 83.2, "NAT README (ImageNet-1k, 224)"),
    "nat_small": ("nat_small", 83.7, "NAT README (ImageNet-1k, 224)"),
    "nat_base": ("nat_base", 84.3, "NAT README (ImageNet-1k, 224)"),
    "dinat_mini": ("dinat_mini", 81.8, "DiNAT README (ImageNet-1k, 224)"),
    "dinat_tiny": ("dinat_tiny", 82.7, "DiNAT README (ImageNet-1k, 224)"),
    "dinat_small": ("dinat_small", 83.8, "DiNAT README (ImageNet-1k, 224)"),
    "dinat_base": ("dinat_base", 84.4, "DiNAT README (ImageNet-1k, 224)"),
    "dinat_large": ("dinat_large", 86.6, "DiNAT README (ImageNet-22k -> 1k, 224)"),
    "dinat_large_384": ("dinat_large_384", 87.4, "DiNAT README (ImageNet-22k -> 1k, 384)"),
    "dinat_large_384_k11": ("dinat_large_384_11x11", 87.5, "DiNAT README (ImageNet-22k -> 1k, 384, kernel 11)"),
}

NAT_PAPER = ("Neighborhood Attention Transformer", "arXiv:2204.07143")
DINAT_PAPER = ("Dilated Neighborhood Attention Transformer", "arXiv:2209.15001")
ORIGIN = "https://github.com/SHI-Labs/Neighborhood-Attention-Transformer"


def nat_pretrained_cfg(paper: tuple[str, str], first_conv: str, size: int = 224, reduction: int = 32) -> dict:
    """The shared data config of the NAT families (official: bicubic, crop 0.875 at 224, 1.0 at 384)."""
    return pretrained_cfg(paper=paper, origin_url=ORIGIN, first_conv=first_conv, load="the official checkpoint",
                          size=size, reduction=reduction, crop_pct=0.875 if size == 224 else 1.0, license="mit")


def tiny(cfg: NATCfg) -> dict:
    """Contract-test size: 16/32/64/128 wide, one layer per stage (isotropic: 32 wide)."""
    if cfg.downsample == "none":
        return dict(depths=(1, 1, 1, 1), embed_dim=32, num_heads=(2, 2, 2, 2))
    return dict(depths=(1, 1, 1, 1), embed_dim=16, num_heads=(1, 2, 2, 4))


register_family(
    __name__, "nat", HierarchicalNet, VARIANTS,
    {n: nat_pretrained_cfg(DINAT_PAPER if n.startswith("dinat") else NAT_PAPER, "stem.proj.0",
                           384 if "_384" in n else 224) for n in VARIANTS},
    checkpoint_filter_fn,
    meta={n: dict(official_params_key=f[0], top1=f[1], top1_source=f[2]) for n, f in _FACTS.items()},
    official={"nat": _official_nat},
    paper="NAT / DiNAT (neighborhood and dilated neighborhood attention)", tiny=tiny,
)
