"""One builder for hierarchical (and isotropic) transformers on token maps, over nested frozen configs.

    stem -> stages (downsample + blocks) -> final norm -> head (pool, dropout, Linear)

A model is a :class:`HierarchicalCfg`: a :class:`StemCfg`, one :class:`StageCfg` per feature level
(depth, width, heads, the :class:`MixerCfg` naming its token mixer in
:data:`~visionzoo.blocks._create.TOKEN_MIXERS` -- ``'none'`` for MLP-only blocks --, and a
:class:`BlockCfg`: MLP, layer scale, norm, position embedding), the downsampler between stages
(:data:`DOWNSAMPLES`), an optional norm closing every stage (``stage_norm``, PVTv2 / VAN: it is
part of the stage, so the stage taps are normed) and the final norm.
Blocks are :class:`~visionzoo.blocks.TransformerBlock` (pre-norm mixer and MLP residuals) on
``[B, H, W, C]`` maps; every tensor the model returns is NCHW. A family keeps a compact config of
the paper's hyperparameters (the fields users override: ``depths``, ``widths`` / ``embed_dim``,
``num_heads``...) whose ``arch()`` returns the :class:`HierarchicalCfg`, and registers
:class:`HierarchicalNet` as its model class (see ``models/nat.py``, ``models/biformer.py``).

Stem, downsample and norm kinds are tables too (:data:`STEMS`, :data:`DOWNSAMPLES`, :data:`NORMS`,
:data:`FINAL_NORMS`), so a new layout is one row. Stage ``i`` opens with the downsampler (timm
layout): stage ``i``'s output is the official "level ``i``" tap of the papers that close a level with it.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import torch.nn as nn
from timm.layers import ClassifierHead

from ..blocks._create import TOKEN_MIXERS, create_token_mixer
from ..blocks.deform_conv import DeformConv2dPack
from ..blocks.mlp import MLP_LAYERS, get_mlp_layer
from ..blocks.nhwc import (BatchNormNhwc, ConvDownsample, ConvLN, ConvTokenizer, LayerNorm, NhwcSequential, NhwcStem,
                           PatchEmbedNhwc, PatchMergingNhwc, UnappliedLayerNorm)
from ..blocks.transformer_block import TransformerBlock
from ._base import Backbone, Stage, drop_path_rates, init_linear_trunc_normal

__all__ = ["per_stage", "StemCfg", "MixerCfg", "BlockCfg", "StageCfg", "HierarchicalCfg", "HierarchicalNet", "STEMS",
           "DOWNSAMPLES", "NORMS", "FINAL_NORMS"]


# ---- stems and downsamplers: (in_chs, out_chs, stem cfg, device / dtype) -> module ----------------
def _patch_stem(in_chs: int, out_chs: int, cfg: StemCfg, dd: dict) -> nn.Module:
    """Patch conv (input zero-padded to a multiple of the patch), LayerNorm if ``cfg.norm``."""
    return PatchEmbedNhwc(cfg.stride, in_chs, out_chs, norm_layer=LayerNorm if cfg.norm else None, **dd)


def _conv_bn_stem(in_chs: int, out_chs: int, cfg: StemCfg, dd: dict) -> nn.Module:
    """BiFormer: 3x3 s2 conv (C/2) -> BN -> GELU -> 3x3 s2 conv -> BN (keys ``0``..``4``)."""
    return NhwcStem(nn.Conv2d(in_chs, out_chs // 2, 3, 2, 1, **dd), nn.BatchNorm2d(out_chs // 2, **dd), nn.GELU(),
                    nn.Conv2d(out_chs // 2, out_chs, 3, 2, 1, **dd), nn.BatchNorm2d(out_chs, **dd))


def _patch_bn_stem(in_chs: int, out_chs: int, cfg: StemCfg, dd: dict) -> nn.Module:
    """Patch conv -> BN (BiFormer's Swin-layout ablation)."""
    return NhwcStem(nn.Conv2d(in_chs, out_chs, cfg.stride, cfg.stride, **dd), nn.BatchNorm2d(out_chs, **dd),
                    pad_multiple=cfg.stride)


def _overlap_bn_stem(in_chs: int, out_chs: int, cfg: StemCfg, dd: dict) -> nn.Module:
    """VAN / PVTv2 ``OverlapPatchEmbed``: 7x7 s4 conv (padding 3, so ``ceil(n / 4)``) -> BN (keys ``0``, ``1``)."""
    return NhwcStem(nn.Conv2d(in_chs, out_chs, 7, 4, 3, **dd), nn.BatchNorm2d(out_chs, **dd))


def _dtm(in_chs: int, out_chs: int, dd: dict) -> nn.Module:
    """LITv2 deformable token merging: DCN 2x2 s2 (offsets from ``conv_offset``) -> BN -> GELU; odd maps are
    zero-padded to even first (the official layer asserts even maps)."""
    return NhwcSequential(OrderedDict(dconv=DeformConv2dPack(in_chs, out_chs, 2, 2, **dd),
                                      norm=nn.BatchNorm2d(out_chs, **dd), act=nn.GELU()), pad_multiple=2)


#: kind -> (constructor, fixed stride or None when ``StemCfg.stride`` is the patch size)
STEMS: dict[str, tuple[Callable[..., nn.Module], int | None]] = {
    "nat": (lambda i, o, cfg, dd: ConvTokenizer(i, o, **dd), 4),  # two 3x3 s2 convs + LayerNorm
    "patch": (_patch_stem, None),
    "conv_bn": (_conv_bn_stem, 4),
    "patch_bn": (_patch_bn_stem, None),
    "overlap_bn": (_overlap_bn_stem, 4),
    # PVTv2 OverlapPatchEmbed: 7x7 s4 conv (padding 3) -> LayerNorm (keys ``proj``, ``norm``)
    "overlap_ln": (lambda i, o, cfg, dd: ConvLN(i, o, 7, 4, 3, image=True, **dd), 4),
    # CSWin: 7x7 s4 conv, padding 2, input zero-padded to a multiple of 4 (ceil(n / 4)) -> LayerNorm
    "cswin": (lambda i, o, cfg, dd: ConvLN(i, o, 7, 4, 2, image=True, pad_multiple=4, **dd), 4),
}

#: kind -> constructor ``(in_chs, out_chs, dd)`` of a stride-2 downsampler; 'none' keeps the resolution
DOWNSAMPLES: dict[str, Callable[..., nn.Module] | None] = {
    "conv_ln": lambda i, o, dd: ConvDownsample(i, o, **dd),  # NAT: 3x3 s2 conv + LayerNorm
    "merge": lambda i, o, dd: PatchMergingNhwc(i, o, norm_layer=LayerNorm, **dd),  # Swin PatchMerging
    # BiFormer; VAN's OverlapPatchEmbed(3x3, s2, padding 1) + BN
    "conv_bn": lambda i, o, dd: NhwcSequential(nn.Conv2d(i, o, 3, 2, 1, **dd), nn.BatchNorm2d(o, **dd)),
    "bn_patch": lambda i, o, dd: NhwcSequential(nn.BatchNorm2d(i, **dd), nn.Conv2d(i, o, 2, 2, **dd), pad_multiple=2),
    "dtm": _dtm,  # LITv2 deformable token merging
    # PVT v1 PatchEmbed: 2x2 s2 patch conv (odd maps zero-padded) -> LayerNorm (keys ``proj``, ``norm``)
    "patch_ln": lambda i, o, dd: ConvLN(i, o, 2, 2, pad_multiple=2, **dd),
    "overlap_ln": lambda i, o, dd: ConvLN(i, o, 3, 2, 1, **dd),  # PVTv2 OverlapPatchEmbed(3x3, s2, padding 1)
    "none": None,  # isotropic
}

#: kind -> constructor ``(channels, eps=, device=, dtype=)`` of a norm on ``[B, H, W, C]`` (block and stage norms)
NORMS: dict[str, Callable[..., nn.Module]] = {"layernorm": nn.LayerNorm, "batchnorm": BatchNormNhwc}

#: kind -> constructor ``(channels, device=, dtype=)`` of the norm after the last stage
FINAL_NORMS: dict[str, Callable[..., nn.Module]] = {
    "layernorm": LayerNorm,  # eps 1e-5
    "batchnorm": BatchNormNhwc,
    "none": lambda c, **dd: nn.Identity(),  # VAN: the last stage closes with its own norm
    "layernorm_unapplied": UnappliedLayerNorm,  # FLatten-PVT v1: a norm the official forward never applies
}


def per_stage(cfg, *names: str, heads: str | None = None) -> int:
    """Validate the per-stage fields of a frozen family config: ``names`` become tuples (ints kept as
    given) with one entry per stage (the first field's length, non-zero); with ``heads``, every width in
    ``cfg.widths`` must divide by that field's head count. Returns the number of stages."""
    for name in names:
        object.__setattr__(cfg, name, tuple(getattr(cfg, name)))
    n = len(getattr(cfg, names[0]))
    if n == 0 or any(len(getattr(cfg, name)) != n for name in names):
        fields = ", ".join(f"{name} {getattr(cfg, name)}" for name in names)
        raise ValueError(f"{type(cfg).__name__}: {fields} need one entry per stage (at least one stage)")
    if heads is not None:
        for i, (w, h) in enumerate(zip(cfg.widths, getattr(cfg, heads))):
            if w % h:
                raise ValueError(f"{type(cfg).__name__}: stage {i} width {w} is not divisible by {heads} {h}")
    return n


def _check(kind: str, table: dict, what: str) -> None:
    if kind not in table:
        raise ValueError(f"{what}: unknown kind {kind!r}; expected one of {sorted(table)}")


# ---- configs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StemCfg:
    kind: str = "nat"  # a key of STEMS
    stride: int = 4  # the patch size of the 'patch' stems; fixed by the others
    norm: bool = True  # 'patch': LayerNorm after the patch conv (official ``patch_norm``)

    def __post_init__(self):
        _check(self.kind, STEMS, "StemCfg")
        fixed = STEMS[self.kind][1]
        if fixed is not None and self.stride != fixed:
            raise ValueError(f"StemCfg: the {self.kind!r} stem has stride {fixed}, got stride={self.stride}")


@dataclass(frozen=True)
class MixerCfg:
    """Token mixer ``kind`` (a key of TOKEN_MIXERS) and its constructor ``options``; ``cycle`` maps an
    option to values cycled over a stage's blocks (DiNAT's alternating dilations)."""
    kind: str = "na"
    options: dict[str, Any] = field(default_factory=dict)
    cycle: dict[str, tuple] = field(default_factory=dict)

    def __post_init__(self):
        _check(self.kind, TOKEN_MIXERS, "MixerCfg")
        if any(not v for v in self.cycle.values()):
            raise ValueError(f"MixerCfg.cycle: every option needs at least one value, got {self.cycle}")

    def block_options(self, block: int) -> dict[str, Any]:
        """Constructor options of block ``block`` of the stage."""
        return {**self.options, **{k: v[block % len(v)] for k, v in self.cycle.items()}}


@dataclass(frozen=True)
class BlockCfg:
    mlp_ratio: float = 4.0
    mlp_layer: str = "mlp"  # a key of blocks.mlp.MLP_LAYERS
    layer_scale: float | None = None  # initial per-channel layer scale (None: none)
    norm: str = "layernorm"  # a key of NORMS: the blocks' pre-norms (VAN: 'batchnorm')
    norm_eps: float = 1e-5  # the blocks' pre-norms
    pos_kernel: int = 0  # depthwise-conv position embedding before the block (0: none)

    def __post_init__(self):
        _check(self.mlp_layer, MLP_LAYERS, "BlockCfg.mlp_layer")
        _check(self.norm, NORMS, "BlockCfg.norm")


@dataclass(frozen=True)
class StageCfg:
    """One stage. ``mixer``: one :class:`MixerCfg` for every block, or a tuple of ``depth`` of them, one
    per block (Agent-Swin's ``'M<k>'`` stages: k agent blocks, then Swin blocks). ``pos_embed``: the
    build-time map ``(h, w)`` of a PVT v1 absolute position embedding added after the downsample
    (:class:`~visionzoo.models._base.Stage`), ``None``: none."""
    depth: int
    width: int
    num_heads: int
    mixer: MixerCfg | tuple[MixerCfg, ...] = MixerCfg()
    block: BlockCfg = BlockCfg()
    pos_embed: tuple[int, int] | None = None

    def __post_init__(self):
        if self.depth < 1 or self.width < 1 or self.num_heads < 1:
            raise ValueError(f"StageCfg: depth, width and num_heads must be positive, got {self}")
        if isinstance(self.mixer, (tuple, list)):
            object.__setattr__(self, "mixer", tuple(self.mixer))
            if len(self.mixer) != self.depth or not all(isinstance(m, MixerCfg) for m in self.mixer):
                raise ValueError(f"StageCfg.mixer: a tuple needs one MixerCfg per block ({self.depth}), got "
                                 f"{self.mixer}")
        elif not isinstance(self.mixer, MixerCfg):
            raise TypeError(f"StageCfg.mixer must be a MixerCfg or a tuple of them, got {type(self.mixer).__name__}")
        if self.pos_embed is not None:
            pe = tuple(self.pos_embed)
            if len(pe) != 2 or not all(isinstance(n, int) and n >= 1 for n in pe):
                raise ValueError(f"StageCfg.pos_embed must be None or a pair of positive ints, got {self.pos_embed!r}")
            object.__setattr__(self, "pos_embed", pe)

    def block_mixer(self, block: int) -> tuple[str, dict[str, Any]]:
        """Token-mixer kind and constructor options of block ``block``."""
        mixer = self.mixer[block] if isinstance(self.mixer, tuple) else self.mixer
        return mixer.kind, mixer.block_options(block)


@dataclass(frozen=True)
class HierarchicalCfg:
    stages: tuple[StageCfg, ...]
    stem: StemCfg = StemCfg()
    downsample: str = "conv_ln"  # a key of DOWNSAMPLES, between consecutive stages
    final_norm: str = "layernorm"  # a key of FINAL_NORMS
    stage_norm: str | None = None  # a key of NORMS: a norm closing every stage (None: none)
    stage_norm_eps: float = 1e-5
    #: parameter-name patterns excluded from weight decay (fnmatch)
    no_weight_decay: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise ValueError("HierarchicalCfg: at least one stage is needed")
        _check(self.downsample, DOWNSAMPLES, "HierarchicalCfg.downsample")
        _check(self.final_norm, FINAL_NORMS, "HierarchicalCfg.final_norm")
        if self.stage_norm is not None:
            _check(self.stage_norm, NORMS, "HierarchicalCfg.stage_norm")

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(s.depth for s in self.stages)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(s.width for s in self.stages)

    @property
    def reductions(self) -> tuple[int, ...]:
        grow = DOWNSAMPLES[self.downsample] is not None
        return tuple(self.stem.stride * (2 ** i if grow else 1) for i in range(len(self.stages)))


# ---- the model ------------------------------------------------------------------------------------
class HierarchicalNet(Backbone):
    """The model of a :class:`HierarchicalCfg` (or of a family config with an ``arch()`` method).

    Args:
        cfg: architecture; kept as ``self.cfg`` (the family config, for its converters).
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after the stem, in the MLPs and after the mixers' output projections.
        attn_drop_rate: attention-probability dropout (mixers that support it).
        drop_path_rate: stochastic depth, linear over all blocks.
        backend: op backend of every mixer that dispatches one (``None``: resolved per call).
    """

    nhwc_stages = True

    def __init__(self, cfg, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 drop_rate: float = 0.0, proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, backend: str | None = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.cfg = cfg
        arch = cfg if isinstance(cfg, HierarchicalCfg) else cfg.arch()
        self.nwd_patterns = arch.no_weight_decay
        widths = arch.widths
        self.stem = STEMS[arch.stem.kind][0](in_chans, widths[0], arch.stem, dd)
        down = DOWNSAMPLES[arch.downsample]
        stages = []
        for i, (stage, dpr) in enumerate(zip(arch.stages, drop_path_rates(drop_path_rate, arch.depths))):
            if i == 0 or down is None:
                # the official dropout after the stem sits in stage 0's (otherwise empty) downsample slot, unless
                # the stage adds a position embedding (PVT v1: one dropout, after the embedding)
                stem_drop = i == 0 and proj_drop_rate > 0 and stage.pos_embed is None
                downsample = nn.Dropout(proj_drop_rate) if stem_drop else nn.Identity()
            else:
                downsample = down(widths[i - 1], stage.width, dd)
            blk = stage.block
            mixers = [stage.block_mixer(j) for j in range(stage.depth)]  # (kind, options) per block
            blocks = [TransformerBlock(
                stage.width,
                create_token_mixer(mixers[j][0], stage.width, stage.num_heads, attn_drop=attn_drop_rate,
                                   proj_drop=proj_drop_rate, backend=backend, **mixers[j][1], **dd),
                mlp_ratio=blk.mlp_ratio, proj_drop=proj_drop_rate, drop_path=dpr[j], layer_scale=blk.layer_scale,
                norm_layer=partial(NORMS[blk.norm], eps=blk.norm_eps), mlp_layer=get_mlp_layer(blk.mlp_layer),
                pos_kernel=blk.pos_kernel, **dd) for j in range(stage.depth)]
            norm = None if arch.stage_norm is None else NORMS[arch.stage_norm](stage.width, eps=arch.stage_norm_eps,
                                                                               **dd)
            stages.append(Stage(downsample, blocks, norm, pos_embed_size=stage.pos_embed, pos_drop=proj_drop_rate,
                                width=stage.width, **dd))
        self.stages = nn.Sequential(*stages)
        self.norm = FINAL_NORMS[arch.final_norm](widths[-1], **dd)
        self.head = ClassifierHead(widths[-1], num_classes, global_pool, drop_rate, **dd)
        self._finish(in_chans, num_classes, widths, arch.reductions, global_pool)
        self.apply(init_linear_trunc_normal)
