"""HaloNet (Vaswani et al., *Scaling Local Self-Attention for Parameter Efficient Visual Backbones*,
CVPR 2021; no official code): the paper's H-series and timm's ResNet-style halonets, as stage
tables over one builder.

The builder is timm's bring-your-own-blocks machinery (``create_byob_stem``/``create_byob_stages``:
tiered or 7x7 stems, bottleneck conv blocks with optional SE/ECA, drop-path), with
:class:`~visionzoo.blocks.halo_attn.HaloBlock` (halo attention in place of the 3x3 conv) as the
attention block, so keys are timm's and timm weights load with one rename (``final_conv`` is our
``norm`` slot). Each stage lists which of its blocks are halo blocks; the rest are bottlenecks.

Any input size: attention maps that are not a multiple of the block are zero-padded (exactly like
the borders; see :mod:`visionzoo.ops.halo`), where timm asserts (its halonet26t fails at 224).
The trunk runs channels-last.

H-series (paper Table 5; block b, halo h, r_v, r_b, l3): stages ``(3, 3, l3, 3)`` of halo blocks
with a 7x7 stem; block outputs ``(64, 128, 256, 512) * r_b``, bottleneck width ``(64, ..., 512)``,
values ``r_v`` times wider. H3-H7 end with a 1x1 conv to 1024/1280/1536/2048/2048 channels. These
widths are our reading of the paper: with them the parameter counts equal the paper's (to its
0.1 M) for every H model, with r_b = 3.5 for H6 (the reference table's 2.75 gives 44.7 M, not 53.4 M).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

import torch.nn as nn
from timm.layers import ClassifierHead, make_divisible
from timm.models._manipulate import named_apply
from timm.models.byobnet import (ByoBlockCfg, ByoModelCfg, _init_weights, create_byob_stages, create_byob_stem,
                                 get_layer_fns)

from .. import convert
from ..blocks.channel_attn import EfficientChannelAttn, eca_kernel_size
from ..blocks.channels_last import ChannelsLastStem
from ..blocks.halo_attn import HaloAttn2d, HaloBlock
from ._base import Backbone, pretrained_cfg
from ._registry import register_family

__all__ = ["HaloNetCfg", "HaloNet", "VARIANTS", "checkpoint_filter_fn"]


def _eca(channels: int, device=None, dtype=None, **_) -> nn.Module:
    """ECA as timm's ``EcaModule`` sizes it (the paper's kernel, at least 3), from our block: same ``conv`` key,
    and it takes a batch of 0 (timm's ``view(B, 1, -1)`` cannot)."""
    return EfficientChannelAttn(channels, kernel_size=max(eca_kernel_size(channels), 3), device=device, dtype=dtype)


#: channel attention names timm's byob builder would resolve itself, where ours must run instead
_CHANNEL_ATTN = {"eca": _eca}


@dataclass(frozen=True)
class HaloNetCfg:
    depths: tuple[int, ...] = (3, 3, 10, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)  # block output widths
    #: per stage, the indices of its halo blocks (the others are bottleneck conv blocks)
    halo_blocks: tuple[tuple[int, ...], ...] = ((0, 1, 2), (0, 1, 2), tuple(range(10)), (0, 1, 2))
    bottle_ratios: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)  # bottleneck width / block output width
    group_size: int = 0  # grouped 3x3 in the conv blocks (ResNeXt); 0: one group
    stem_type: str = "7x7"  # '7x7' | 'tiered' (three 3x3s)
    stem_pool: str = "maxpool"  # 'maxpool' | '' (the last stem conv strides instead)
    stem_width: int = 64
    act: str = "relu"
    channel_attn: str = ""  # '', 'se', 'eca': in the conv blocks
    num_features: int = 0  # final 1x1 conv width (0: none)
    block_size: int = 8
    halo_size: int = 3
    num_heads: tuple[int, ...] = (8, 8, 8, 8)
    head_dim: int | None = None  # q/k head dim (default: the value head dim)
    value_ratio: float = 1.0  # the paper's r_v

    def __post_init__(self):
        n = len(self.depths)
        for name in ("widths", "halo_blocks", "bottle_ratios", "num_heads"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"HaloNetCfg.{name} needs one entry per stage ({n}), got {getattr(self, name)}")
        for i, (d, idx) in enumerate(zip(self.depths, self.halo_blocks)):
            if any(not 0 <= j < d for j in idx):
                raise ValueError(f"HaloNetCfg.halo_blocks[{i}] = {idx}: indices must be < the stage depth {d}")
        if self.stem_type not in ("7x7", "tiered"):
            raise ValueError(f"HaloNetCfg.stem_type must be '7x7' or 'tiered', got {self.stem_type!r}")
        for i, (c, br) in enumerate(zip(self.widths, self.bottle_ratios)):
            mid = make_divisible(c * br)
            if self.group_size and mid % self.group_size:
                raise ValueError(f"HaloNetCfg: stage {i}'s bottleneck width {mid} (widths x bottle_ratio) must be a "
                                 f"multiple of group_size {self.group_size}")
        if self.block_size < 1 or self.halo_size < 0:
            raise ValueError(f"HaloNetCfg: block_size >= 1 and halo_size >= 0 needed, got "
                             f"{self.block_size}, {self.halo_size}")

    def byob(self) -> ByoModelCfg:
        """The equivalent timm ``ByoModelCfg`` (halo blocks as :class:`HaloBlock`)."""
        halo = partial(HaloBlock, value_ratio=self.value_ratio)
        stages = []
        for i, (d, c, idx, br, heads) in enumerate(zip(self.depths, self.widths, self.halo_blocks,
                                                         self.bottle_ratios, self.num_heads)):
            attn = dict(block_size=self.block_size, halo_size=self.halo_size, num_heads=heads,
                        **({"dim_head": self.head_dim} if self.head_dim else {}))
            stages.append(tuple(
                ByoBlockCfg(type=halo if j in idx else "bottle", d=1, c=c, s=1 if i == 0 else 2, gs=self.group_size,
                            br=br, self_attn_layer=HaloAttn2d, self_attn_kwargs=attn) for j in range(d)))
        return ByoModelCfg(blocks=tuple(stages), stem_chs=self.stem_width, stem_type=self.stem_type,
                           stem_pool=self.stem_pool, act_layer=self.act, num_features=self.num_features,
                           attn_layer=_CHANNEL_ATTN.get(self.channel_attn, self.channel_attn or None),
                           self_attn_layer=HaloAttn2d)


class HaloNet(Backbone):
    """HaloNet over :class:`HaloNetCfg` (see the module docstring)."""

    def __init__(self, cfg: HaloNetCfg, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, zero_init_last: bool = True,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.cfg = cfg
        byob = cfg.byob()
        stem, stem_feat = create_byob_stem(in_chans, cfg.stem_width, cfg.stem_type, cfg.stem_pool,
                                           layers=get_layer_fns(byob, allow_aa=False), **dd)
        self.stem = ChannelsLastStem(OrderedDict(stem.named_children()))
        self.stages, feats, _ = create_byob_stages(byob, drop_path_rate, 32, stem_feat[-1], layers=get_layer_fns(byob),
                                                   **dd)
        chs = [f["num_chs"] for f in feats if f["module"].startswith("stages")]
        reductions = [f["reduction"] for f in feats if f["module"].startswith("stages")]
        if cfg.num_features:
            self.norm = get_layer_fns(byob).conv_norm_act(chs[-1], cfg.num_features, 1, **dd)
        else:
            self.norm = nn.Identity()
        num_features = cfg.num_features or chs[-1]
        self.head = ClassifierHead(num_features, num_classes, global_pool, drop_rate, **dd)
        self._finish(in_chans, num_classes, chs, reductions, global_pool, num_features=num_features)
        named_apply(partial(_init_weights, zero_init_last=zero_init_last), self)


# ---- checkpoint conversion ----------------------------------------------------------------------
def checkpoint_filter_fn(state_dict, model: HaloNet):
    """visionzoo or timm (``halonet*``, ``sehalonet33ts``, ``eca_halonext26ts``) keys -> visionzoo."""
    return convert.remap(state_dict, model, {"timm": lambda sd: convert.rename(sd, [(r"^final_conv\.", "norm.")])})


# ---- variants -----------------------------------------------------------------------------------
def _h_series(b: int, h: int, rv: float, rb: float, l3: int, final: int = 0) -> HaloNetCfg:
    depths = (3, 3, l3, 3)
    return HaloNetCfg(depths=depths, widths=tuple(int(c * rb) for c in (64, 128, 256, 512)),
                      halo_blocks=tuple(tuple(range(d)) for d in depths), bottle_ratios=(1 / rb,) * 4,
                      block_size=b, halo_size=h, value_ratio=rv, num_features=final)


_RESNET = dict(depths=(2, 2, 2, 2), widths=(256, 512, 1024, 2048), bottle_ratios=(0.25,) * 4, stem_type="tiered")
#: name -> (config, train/test resolution, paper parameter count in M or None, official_params key or None)
_TABLE = {
    "halonet_h0": (_h_series(8, 3, 1.0, 0.5, 7), 256, 5.5),
    "halonet_h1": (_h_series(8, 3, 1.0, 1.0, 10), 256, 8.1),
    "halonet_h2": (_h_series(8, 3, 1.0, 1.25, 11), 256, 9.4),
    "halonet_h3": (_h_series(10, 3, 1.0, 1.5, 12, 1024), 320, 11.8),
    "halonet_h4": (_h_series(12, 2, 1.0, 3.0, 12, 1280), 384, 19.1),
    "halonet_h5": (_h_series(14, 2, 2.5, 2.0, 23, 1536), 448, 30.7),
    "halonet_h6": (_h_series(8, 4, 3.0, 3.5, 24, 2048), 512, 53.4),
    "halonet_h7": (_h_series(10, 3, 4.0, 3.5, 26, 2048), 600, 67.4),
    "halonet26t": (HaloNetCfg(**_RESNET, halo_blocks=((), (), (1,), (0, 1)), block_size=8, halo_size=2), 256, None),
    "sehalonet33ts": (HaloNetCfg(
        depths=(2, 3, 3, 2), widths=(256, 512, 1024, 1536), halo_blocks=((), (2,), (2,), (0, 1)),
        bottle_ratios=(0.25, 0.25, 0.25, 0.333), stem_type="tiered", stem_pool="", act="silu", num_features=1280,
        channel_attn="se"), 256, None),
    "halonet50ts": (HaloNetCfg(
        depths=(3, 4, 6, 3), widths=(256, 512, 1024, 2048), halo_blocks=((), (3,), (1, 3, 5), (1,)),
        bottle_ratios=(0.25,) * 4, stem_type="tiered", act="silu", num_heads=(8, 4, 8, 8)), 256, None),
    "eca_halonext26ts": (HaloNetCfg(**_RESNET, halo_blocks=((), (), (1,), (0, 1)), group_size=16, act="silu",
                                    channel_attn="eca", block_size=8, halo_size=2, head_dim=16), 256, None),
}
_OFFICIAL_KEYS = {"halonet_h1", "halonet26t", "sehalonet33ts", "halonet50ts", "eca_halonext26ts"}
VARIANTS = {n: cfg for n, (cfg, _, _) in _TABLE.items()}


def _pretrained_cfg(name: str, res: int) -> dict:
    extra = {} if name in _OFFICIAL_KEYS and name != "halonet_h1" else dict(notes=(
        "The paper's H-series; no official code or weights exist (widths: see visionzoo.models.halonet).",))
    return pretrained_cfg(paper=("Scaling Local Self-Attention for Parameter Efficient Visual Backbones",
                                 "arXiv:2103.12731"), origin_url="https://github.com/huggingface/pytorch-image-models",
                          first_conv="stem.conv1.conv", load="timm's state_dict of the same name", size=res,
                          crop_pct=0.94, **extra)


def tiny(cfg: HaloNetCfg) -> dict:
    """4x4 blocks with halo 1, one or two blocks per stage, the table's halo layout clipped to them."""
    depths = (1, 1, 2, 1)
    return dict(depths=depths, widths=(32, 64, 64, 128), stem_width=16, block_size=4, halo_size=1,
                num_heads=(2, 2, 2, 2), num_features=64 if cfg.num_features else 0,
                group_size=4 if cfg.group_size else 0, head_dim=8 if cfg.head_dim else None,
                halo_blocks=tuple(tuple(j for j in idx if j < d) or ((d - 1,) if i else ())
                                  for i, (idx, d) in enumerate(zip(cfg.halo_blocks, depths))))


def _meta(name: str) -> dict:
    _, _, paper = _TABLE[name]
    meta = dict(official_params_key=name if name in _OFFICIAL_KEYS else None)
    if paper is not None:
        meta.update(paper_params_m=paper, paper_params_source="HaloNet paper, Table 5 (reference/architectures.md §5)")
    return meta


register_family(
    __name__, "halonet", HaloNet, VARIANTS, {n: _pretrained_cfg(n, r) for n, (_, r, _) in _TABLE.items()},
    checkpoint_filter_fn, meta={n: _meta(n) for n in _TABLE}, paper="HaloNet (blocked local self-attention with halo)",
    tiny=tiny, aliases={"channels": "widths", "stem_chs": "stem_width", "dim_head": "head_dim"},
)
