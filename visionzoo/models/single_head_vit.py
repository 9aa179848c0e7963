"""SHViT (Yun & Ro, *SHViT: Single-Head Vision Transformer with Memory Efficient Macro Design*,
CVPR 2024, ``ysj9909/SHViT`` ``model/shvit.py``).

A 16x16 patchify stem (four 3x3 stride-2 Conv-BN, ReLU between), then three stages at strides
16 / 32 / 64. A block is Residual(depthwise 3x3 Conv-BN) -> Residual(single-head attention over
a partial channel slice, :class:`~visionzoo.blocks.SingleHeadAttn`; stage 1 has none) ->
Residual(1x1 Conv-BN FFN, ratio 2). Between stages: [Residual DW, Residual FFN] at the old width,
PatchMerging (1x1 to 4C, ReLU, depthwise 3x3 stride 2, ReLU, timm SqueezeExcite 0.25, 1x1 to the
new width), [Residual DW, Residual FFN] at the new width. Head: global average pool,
BatchNorm1d -> Linear. Attention is global and every conv pads, so any input size runs. The trunk
runs channels-last (:class:`~visionzoo.blocks.channels_last.ChannelsLastStem`: 1.1x forward and
training step on shvit_s4).

Keys follow timm's ``shvit`` (``stages.{i}.downsample.{0..4}``, ``stages.{i}.blocks.{j}``) with
``stem`` for ``patch_embed`` and ``head.fc`` for ``head.l``; the converter reads timm and
official (``blocks{n}``) checkpoints. :meth:`SHViT.fuse` folds every Conv-BN, the depthwise
shortcuts and the head's BN for deployment (the official ``replace_batchnorm``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d, SqueezeExcite, trunc_normal_

from .. import convert
from ..blocks.channels_last import ChannelsLastStem
from ..blocks.conv_bn import ConvBN, ResidualBN, bn_scale_shift, fuse_modules
from ..blocks.single_head_attn import SingleHeadAttn
from ._base import Backbone, Stage, pretrained_cfg
from ._registry import register_family

__all__ = ["SHViTCfg", "SHViT", "VARIANTS"]


@dataclass(frozen=True)
class SHViTCfg:
    widths: tuple[int, ...] = (128, 256, 384)
    partial_dims: tuple[int, ...] = (32, 64, 96)
    qk_dims: tuple[int, ...] = (16, 16, 16)
    depths: tuple[int, ...] = (1, 2, 3)
    #: per stage: "s" single-head attention blocks, "i" attention-free blocks
    types: tuple[str, ...] = ("s", "s", "s")

    def __post_init__(self):
        n = len(self.widths)
        for name in ("partial_dims", "qk_dims", "depths", "types"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"SHViTCfg.{name} needs one entry per stage ({n}), got {getattr(self, name)!r}")
        if any(t not in ("s", "i") for t in self.types):
            raise ValueError(f"SHViTCfg.types entries must be 's' or 'i', got {self.types!r}")


def _ffn(dim: int, dd: dict) -> ResidualBN:
    """Residual 1x1 Conv-BN -> ReLU -> 1x1 Conv-BN (gamma 0) at ratio 2 (keys ``m.pw1``, ``m.pw2``)."""
    ffn = nn.Sequential()
    ffn.add_module("pw1", ConvBN(dim, 2 * dim, **dd))
    ffn.add_module("act", nn.ReLU())
    ffn.add_module("pw2", ConvBN(2 * dim, dim, bn_weight_init=0.0, **dd))
    return ResidualBN(ffn)


def _dw(dim: int, dd: dict, bn_weight_init: float = 1.0) -> ResidualBN:
    return ResidualBN(ConvBN(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=bn_weight_init, **dd))


class PatchMerging(nn.Module):
    """1x1 Conv-BN to 4C, ReLU, depthwise 3x3 stride-2 Conv-BN, ReLU, SE(0.25), 1x1 Conv-BN."""

    def __init__(self, dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hid = 4 * dim
        self.conv1 = ConvBN(dim, hid, **dd)
        self.act1 = nn.ReLU()
        self.conv2 = ConvBN(hid, hid, 3, 2, 1, groups=hid, **dd)
        self.act2 = nn.ReLU()
        self.se = SqueezeExcite(hid, 0.25, **dd)
        self.conv3 = ConvBN(hid, out_dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.se(self.act2(self.conv2(self.act1(self.conv1(x))))))


class SHViTBlock(nn.Module):
    """Residual depthwise conv (gamma 0) -> Residual single-head attention (``'s'``) -> Residual FFN."""

    def __init__(self, dim: int, qk_dim: int, pdim: int, kind: str, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = _dw(dim, dd, bn_weight_init=0.0)
        self.mixer = ResidualBN(SingleHeadAttn(dim, qk_dim, pdim, **dd)) if kind == "s" else nn.Identity()
        self.ffn = _ffn(dim, dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.mixer(self.conv(x)))


class NormLinearHead(nn.Module):
    """Pool -> dropout -> BatchNorm1d -> Linear (the official ``BN_Linear``); pre-logits are the
    pooled features. ``fuse()`` folds the BN into the Linear."""

    def __init__(self, in_features: int, num_classes: int, pool_type: str = "avg", drop_rate: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
        self.drop = nn.Dropout(drop_rate)
        self._make(num_classes, dict(device=device, dtype=dtype))

    def _make(self, num_classes: int, dd: dict) -> None:
        self.bn = nn.BatchNorm1d(self.in_features, **dd) if num_classes > 0 else nn.Identity()
        self.fc = nn.Linear(self.in_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_(self.fc.weight, std=0.02)
            nn.init.zeros_(self.fc.bias)

    def reset(self, num_classes: int, pool_type: str | None = None, in_features: int | None = None,
              device=None, dtype=None) -> None:
        if pool_type is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
        if in_features is not None:
            self.in_features = in_features
        self._make(num_classes, dict(device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.global_pool(x))
        return x if pre_logits else self.fc(self.bn(x))

    @torch.no_grad()
    def fuse(self) -> "NormLinearHead":
        if isinstance(self.bn, nn.BatchNorm1d):
            fc = self.fc
            scale, shift = bn_scale_shift(self.bn)
            fused = nn.Linear(fc.in_features, fc.out_features, device=fc.weight.device, dtype=fc.weight.dtype)
            fused.weight.copy_(fc.weight * scale[None, :])
            fused.bias.copy_(fc.bias + fc.weight @ shift)
            self.bn, self.fc = nn.Identity(), fused
        return self


class SHViT(Backbone):
    """SHViT over :class:`SHViTCfg`.

    Args:
        cfg: architecture.
        drop_rate: dropout before the classifier.
    """

    def __init__(self, cfg: SHViTCfg, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 drop_rate: float = 0.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.cfg = cfg
        c = cfg.widths[0]
        self.stem = ChannelsLastStem(ConvBN(in_chans, c // 8, 3, 2, 1, **dd), nn.ReLU(),
                                     ConvBN(c // 8, c // 4, 3, 2, 1, **dd), nn.ReLU(),
                                     ConvBN(c // 4, c // 2, 3, 2, 1, **dd), nn.ReLU(),
                                     ConvBN(c // 2, c, 3, 2, 1, **dd))
        stages, prev = [], c
        for dim, pdim, qk, depth, kind in zip(cfg.widths, cfg.partial_dims, cfg.qk_dims, cfg.depths, cfg.types):
            down = nn.Identity() if dim == prev else nn.Sequential(
                _dw(prev, dd), _ffn(prev, dd), PatchMerging(prev, dim, **dd), _dw(dim, dd), _ffn(dim, dd))
            stages.append(Stage(down, [SHViTBlock(dim, qk, pdim, kind, **dd) for _ in range(depth)]))
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()
        self.head = NormLinearHead(prev, num_classes, global_pool, drop_rate, **dd)
        reductions = [16 * 2 ** i for i in range(len(cfg.widths))]
        self._finish(in_chans, num_classes, cfg.widths, reductions, global_pool)

    @torch.no_grad()
    def fuse(self) -> "SHViT":
        """Fold every Conv-BN, depthwise shortcut and the head's BN in place (deployment; eval only)."""
        fuse_modules(self)
        return self.eval()


# ---- checkpoint conversion ----------------------------------------------------------------------
_TIMM_RULES = [(r"^patch_embed\.", "stem."), (r"^head\.l\.", "head.fc.")]


def _official_block(m) -> str:
    """Official ``blocks{n}.{j}.`` (n >= 2: j = 0, 1, 2 are the downsample's three parts)."""
    n, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
    if n == 1:
        return f"stages.0.blocks.{j}.{rest}"
    if j == 0:  # Sequential(Residual DW, Residual FFN) at the old width
        return f"stages.{n - 1}.downsample.{rest}"
    if j == 1:
        return f"stages.{n - 1}.downsample.2.{rest}"
    if j == 2:  # at the new width: downsample.3 / .4
        a, _, tail = rest.partition(".")
        return f"stages.{n - 1}.downsample.{int(a) + 3}.{tail}"
    return f"stages.{n - 1}.blocks.{j - 3}.{rest}"


def checkpoint_filter_fn(state_dict, model: SHViT):
    """visionzoo, timm (``patch_embed``, ``head.l``) or official (``blocks{n}``) keys -> visionzoo keys."""
    official = _TIMM_RULES + [(r"^blocks(\d+)\.(\d+)\.(.*)$", _official_block)]
    return convert.remap(state_dict, model, {
        "timm": lambda sd: convert.rename(sd, _TIMM_RULES),
        "official": lambda sd: convert.rename(sd, official)})


def _official(kw: dict):
    """``SHViT(in_chans=3, num_classes=1000, embed_dim=[128, 256, 384], partial_dim=[32, 64, 96],
    qk_dim=[16, 16, 16], depth=[1, 2, 3], types=['s', 's', 's'], down_ops=[['subsample', 2],
    ['subsample', 2], ['']], distillation=False)``."""
    kw = convert.check_official_kwargs("shvit", kw, {"in_chans", "num_classes", "embed_dim", "partial_dim", "qk_dim",
                                                     "depth", "types", "down_ops", "distillation"},
                                       supported=dict(distillation=False))
    dims = tuple(kw.get("embed_dim", (128, 256, 384)))
    down = [tuple(d) for d in kw.get("down_ops", [["subsample", 2], ["subsample", 2], [""]])]
    # the official net downsamples into stage i + 1 when down_ops[i] is ('subsample', 2); ours when the width changes
    for i in range(len(dims) - 1):
        if (down[i][:1] == ("subsample",)) != (dims[i] != dims[i + 1]):
            raise NotImplementedError(f"from_official('shvit'): down_ops {down} with embed_dim {list(dims)} "
                                      "(a downsample exactly where the width changes is implemented)")
    overrides = dict(widths=dims, partial_dims=tuple(kw.get("partial_dim", (32, 64, 96))),
                     qk_dims=tuple(kw.get("qk_dim", (16, 16, 16))), depths=tuple(kw.get("depth", (1, 2, 3))),
                     types=tuple(kw.get("types", ("s", "s", "s"))))
    return "shvit_s1", overrides, dict(num_classes=kw.get("num_classes", 1000), in_chans=kw.get("in_chans", 3))


# ---- variants -----------------------------------------------------------------------------------
def _cfg(dims, depths, pdims) -> SHViTCfg:
    return SHViTCfg(widths=dims, partial_dims=pdims, qk_dims=(16, 16, 16), depths=depths, types=("i", "s", "s"))


VARIANTS = {
    "shvit_s1": _cfg((128, 224, 320), (2, 4, 5), (32, 48, 68)),
    "shvit_s2": _cfg((128, 308, 448), (2, 4, 5), (32, 66, 96)),
    "shvit_s3": _cfg((192, 352, 448), (3, 5, 5), (48, 75, 96)),
    "shvit_s4": _cfg((224, 336, 448), (4, 7, 6), (48, 72, 96)),
}
_TOP1 = {"shvit_s1": 72.8, "shvit_s2": 75.2, "shvit_s3": 77.4, "shvit_s4": 79.4}


def _pretrained_cfg(name: str) -> dict:
    return pretrained_cfg(paper=("SHViT: Single-Head Vision Transformer with Memory Efficient Macro Design",
                                 "arXiv:2401.16456"), origin_url="https://github.com/ysj9909/SHViT",
                          first_conv="stem.0.c", load="an official or timm checkpoint",
                          size=(size := 256 if name == "shvit_s4" else 224), reduction=64, license="mit",
                          pool_size=(-(-size // 64),) * 2)  # every stride-2 conv rounds up: 224 -> 4 x 4


register_family(
    __name__, "single_head_vit", SHViT, VARIANTS, {n: _pretrained_cfg(n) for n in VARIANTS}, checkpoint_filter_fn,
    meta={n: dict(official_params_key=n, top1=t, top1_source="SHViT README (ImageNet-1k)") for n, t in _TOP1.items()},
    official={"shvit": _official},
    paper="SHViT (single-head attention over partial channels)",
    tiny=lambda cfg: dict(widths=(16, 24, 32), partial_dims=(4, 8, 8), depths=(1, 1, 1)),
    aliases={"embed_dims": "widths"},
)
