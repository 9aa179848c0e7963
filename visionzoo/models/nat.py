"""NAT and DiNAT (Hassani et al., CVPR 2023; Hassani & Shi, 2022): hierarchical transformers of
(dilated) neighborhood attention layers; and :class:`NATransformer`, the one builder that DiNAT_s
(:mod:`.dinat_s`) and the isotropic models (:mod:`.nat_isotropic`) are configured over.

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

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, PatchEmbed
from timm.models.swin_transformer import PatchMerging

from .. import convert
from ..blocks.neighborhood_attn import NeighborhoodAttn2d
from ..blocks.rel_pos_attn import GlobalRelPosAttn2d
from ..blocks.transformer_block import TransformerBlock
from ._base import Backbone, Stage
from ._registry import register_family

__all__ = ["NATCfg", "NATransformer", "VARIANTS", "checkpoint_filter_fn"]

_LN = partial(nn.LayerNorm, eps=1e-5)


@dataclass(frozen=True)
class NATCfg:
    depths: tuple[int, ...] = (3, 4, 6, 5)
    num_heads: tuple[int, ...] = (2, 4, 8, 16)
    embed_dim: int = 64
    mlp_ratio: float = 3.0
    kernel_size: int = 7
    #: configured dilation per stage, cycled over the stage's blocks; None: plain NA everywhere
    dilations: tuple[tuple[int, ...], ...] | None = None
    layer_scale: float | None = None
    qkv_bias: bool = True
    qk_scale: float | None = None
    stem: str = "conv"  # 'conv': NAT ConvTokenizer (stride 4) | 'patch': patch_size conv (+ LN)
    patch_size: int = 4  # 'patch' stem only
    stem_norm: bool = True  # 'patch' stem only (official patch_norm)
    downsample: str = "conv"  # 'conv': NAT ConvDownsampler | 'merge': Swin PatchMerging | 'none': isotropic
    attn: str = "na"  # 'na': (dilated) neighborhood attention | 'global': ViT-RPB
    rpb_table: int = 14  # 'global' only: map side the bias table was trained for

    def __post_init__(self):
        for name in ("depths", "num_heads"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.dilations is not None:
            object.__setattr__(self, "dilations", tuple(tuple(int(d) for d in s) for s in self.dilations))
        n = len(self.depths)
        if n == 0 or len(self.num_heads) != n or min(self.depths) < 1:
            raise ValueError(f"NATCfg: depths {self.depths} and num_heads {self.num_heads} need the same non-zero "
                             "length and positive depths")
        dil = self.dilations
        if dil is not None and (len(dil) != n or any(not s or min(s) < 1 for s in dil)):
            raise ValueError(f"NATCfg.dilations needs one non-empty tuple of positive ints per stage, got {dil}")
        for name, allowed in (("stem", ("conv", "patch")), ("downsample", ("conv", "merge", "none")),
                              ("attn", ("na", "global"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"NATCfg.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for i, (w, h) in enumerate(zip(self.widths, self.num_heads)):
            if w % h:
                raise ValueError(f"NATCfg: stage {i} width {w} is not divisible by num_heads {h}")

    @property
    def widths(self) -> tuple[int, ...]:
        grow = self.downsample != "none"
        return tuple(self.embed_dim * (2 ** i if grow else 1) for i in range(len(self.depths)))

    @property
    def reductions(self) -> tuple[int, ...]:
        stem = 4 if self.stem == "conv" else self.patch_size
        grow = self.downsample != "none"
        return tuple(stem * (2 ** i if grow else 1) for i in range(len(self.depths)))

    def dilation(self, stage: int, block: int) -> int:
        """Configured dilation of ``block`` in ``stage``."""
        if self.dilations is None:
            return 1
        pattern = self.dilations[stage]
        return pattern[block % len(pattern)]


class ConvTokenizer(nn.Module):
    """NAT stem: 3x3 s2 conv (C/2) -> 3x3 s2 conv (C), both with bias, then LayerNorm; NCHW -> NHWC."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.proj = nn.Sequential(nn.Conv2d(in_chs, out_chs // 2, 3, 2, 1, **dd),
                                  nn.Conv2d(out_chs // 2, out_chs, 3, 2, 1, **dd))
        self.norm = _LN(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsample(nn.Module):
    """NAT downsampler on ``[B, H, W, C]``: 3x3 s2 conv C -> 2C without bias, then LayerNorm."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.reduction = nn.Conv2d(in_chs, out_chs, 3, 2, 1, bias=False, **dd)
        self.norm = _LN(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


NATStage = Stage  # the name the NAT code and its tests use


class NATransformer(Backbone):
    """NAT / DiNAT / DiNAT_s / isotropic NAT, DiNAT and ViT-RPB over :class:`NATCfg`.

    Args:
        cfg: architecture.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after the stem, in the MLPs and after attention projections (the
            official ``drop_rate``).
        attn_drop_rate: attention-probability dropout ('global' attention only; NA must use 0).
        drop_path_rate: stochastic depth, linear over all blocks.
        backend: ``na2d`` backend for every NA layer (``None``: resolved per call).
    """

    channels_last_stages = True
    nwd_patterns = ("*.rpb",)

    def __init__(self, cfg: NATCfg, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 drop_rate: float = 0.0, proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, backend: str | None = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.cfg = cfg
        widths = cfg.widths
        if cfg.stem == "conv":
            self.stem = ConvTokenizer(in_chans, cfg.embed_dim, **dd)
        else:
            self.stem = PatchEmbed(None, cfg.patch_size, in_chans, cfg.embed_dim,
                                   norm_layer=_LN if cfg.stem_norm else None, flatten=False, output_fmt="NHWC",
                                   strict_img_size=False, dynamic_img_pad=True, **dd)
        n_blocks = sum(cfg.depths)
        dpr = iter(drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks))
        mixer = partial(self._mixer, cfg, attn_drop=attn_drop_rate, proj_drop=proj_drop_rate, backend=backend, **dd)
        stages = []
        for i, (depth, dim, heads) in enumerate(zip(cfg.depths, widths, cfg.num_heads)):
            if i == 0 or cfg.downsample == "none":
                # the official dropout after the stem sits in stage 0's (empty) downsample slot
                downsample = nn.Dropout(proj_drop_rate) if i == 0 and proj_drop_rate > 0 else nn.Identity()
            elif cfg.downsample == "conv":
                downsample = ConvDownsample(widths[i - 1], dim, **dd)
            else:
                downsample = PatchMerging(widths[i - 1], dim, norm_layer=_LN, **dd)
            blocks = [TransformerBlock(dim, mixer(dim, heads, cfg.dilation(i, j)), cfg.mlp_ratio, proj_drop_rate,
                                       next(dpr), cfg.layer_scale, _LN, **dd) for j in range(depth)]
            stages.append(NATStage(downsample, blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = _LN(widths[-1], **dd)
        self.head = ClassifierHead(widths[-1], num_classes, global_pool, drop_rate, **dd)
        self._finish(in_chans, num_classes, widths, cfg.reductions, global_pool)
        self.apply(self._init_weights)

    @staticmethod
    def _mixer(cfg: NATCfg, dim: int, heads: int, dilation: int, attn_drop: float, proj_drop: float,
               backend: str | None, device=None, dtype=None) -> nn.Module:
        dd = dict(device=device, dtype=dtype)
        if cfg.attn == "global":
            return GlobalRelPosAttn2d(dim, heads, cfg.rpb_table, cfg.qkv_bias, cfg.qk_scale, attn_drop, proj_drop, **dd)
        return NeighborhoodAttn2d(dim, heads, cfg.kernel_size, dilation, cfg.qkv_bias, cfg.qk_scale, attn_drop,
                                  proj_drop, rpb=True, backend=backend, **dd)

    @staticmethod
    def num_stages(cfg: NATCfg) -> int:
        return len(cfg.depths)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)



# ---- checkpoint conversion ----------------------------------------------------------------------
def _official_rules(model: NATransformer) -> list:
    rules = [(r"^patch_embed\.", "stem."), (r"^head\.", "head.fc."), (r"\.gamma([12])$", r".ls\1.gamma")]
    if model.cfg.downsample == "none":  # isotropic: one flat `layers.{j}` list, grouped into stages here
        where = [(i, j) for i, d in enumerate(model.cfg.depths) for j in range(d)]
        rules.append((r"^layers\.(\d+)\.", lambda m: "stages.{}.blocks.{}.".format(*where[int(m.group(1))])))
    else:  # NAT `levels.{i}`, DiNAT_s `layers.{i}`; their downsampler closes level i, ours opens stage i + 1
        rules += [(r"^(?:levels|layers)\.(\d+)\.downsample\.", lambda m: f"stages.{int(m.group(1)) + 1}.downsample."),
                  (r"^(?:levels|layers)\.(\d+)\.blocks\.", r"stages.\1.blocks.")]
    return rules


def checkpoint_filter_fn(state_dict, model: NATransformer):
    """visionzoo or official (NAT/DiNAT ``levels``, DiNAT_s ``layers``, isotropic flat ``layers``) keys ->
    visionzoo keys. ``gamma1/2`` become ``ls1/2.gamma``; values are unchanged."""
    return convert.remap(state_dict, model, {"official": lambda sd: convert.rename(sd, _official_rules(model))})


# ---- official constructor calls -> visionzoo configs --------------------------------------------
def official_kwargs_check(kw: dict, family: str, allowed: set) -> dict:
    """Copy of ``kw`` after rejecting unknown names and non-LayerNorm ``norm_layer``."""
    kw = dict(kw)
    unknown = set(kw) - allowed
    if unknown:
        raise TypeError(f"from_official({family!r}): unsupported official arguments {sorted(unknown)}")
    norm = kw.pop("norm_layer", nn.LayerNorm)
    if norm not in (nn.LayerNorm, "LayerNorm", "nn.LayerNorm"):
        raise NotImplementedError(f"from_official({family!r}): only norm_layer=nn.LayerNorm is implemented, "
                                  f"got {norm!r}")
    return kw


def official_model_kwargs(kw: dict, drop_path_default: float) -> dict:
    """Official runtime arguments -> :class:`NATransformer` keyword arguments."""
    return dict(num_classes=kw.get("num_classes", 1000), in_chans=kw.get("in_chans", 3),
                drop_path_rate=kw.get("drop_path_rate", drop_path_default), proj_drop_rate=kw.get("drop_rate", 0.0),
                attn_drop_rate=kw.get("attn_drop_rate", 0.0))


def _official_nat(kw: dict):
    """``NAT(embed_dim, mlp_ratio, depths, num_heads, drop_path_rate=0.2, in_chans=3, kernel_size=7,
    dilations=None, num_classes=1000, qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
    norm_layer=nn.LayerNorm, layer_scale=None)`` (DiNAT is the same class)."""
    kw = official_kwargs_check(kw, "nat", {"embed_dim", "mlp_ratio", "depths", "num_heads", "drop_path_rate",
                                           "in_chans", "kernel_size", "dilations", "num_classes", "qkv_bias",
                                           "qk_scale", "drop_rate", "attn_drop_rate", "norm_layer", "layer_scale"})
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
    return NATCfg(**{**cfg.__dict__, "dilations": _DIL_224, **kw})


VARIANTS = {
    "nat_mini": _MINI,
    "nat_tiny": _TINY,
    "nat_small": NATCfg(**{**_SMALL.__dict__, "layer_scale": 1e-5}),
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


def pretrained_cfg(paper: tuple[str, str], first_conv: str, size: int = 224, reduction: int = 32) -> dict:
    """The shared data config of the NAT families (official: bicubic, crop 0.875 at 224, 1.0 at 384)."""
    return dict(
        num_classes=1000, input_size=(3, size, size), pool_size=(size // reduction,) * 2,
        crop_pct=0.875 if size == 224 else 1.0, interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD, first_conv=first_conv, classifier="head.fc", license="mit", paper_name=paper[0],
        paper_ids=paper[1], origin_url=ORIGIN,
        notes=("Weights are not hosted by visionzoo; load the official checkpoint with "
               "create_model(name, checkpoint_path=...).",),
    )


register_family(
    __name__, "nat", NATransformer, VARIANTS,
    {n: pretrained_cfg(DINAT_PAPER if n.startswith("dinat") else NAT_PAPER, "stem.proj.0", 384 if "_384" in n else 224)
     for n in VARIANTS},
    checkpoint_filter_fn,
    meta={n: dict(official_params_key=f[0], top1=f[1], top1_source=f[2]) for n, f in _FACTS.items()},
    official={"nat": _official_nat},
    paper="NAT / DiNAT (neighborhood and dilated neighborhood attention)",
)
