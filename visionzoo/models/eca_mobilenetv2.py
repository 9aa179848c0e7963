"""ECA-MobileNetV2 (ECA-Net, Wang et al., CVPR 2020): MobileNetV2 with ECA after every inverted
residual's projection BN. The official ECA kernel rule is ``k = 1 if c < 96 else 3`` on the row's
channel count (ECANet @ b332f6b, whose parameter count, 3,504,903, this reproduces; a later commit
of that file reads ``c <= 96``).

Stages are grouped by output stride (2, 4, 8, 16, 32); the final 1x1 conv to 1280 channels sits
in the contract's ``norm`` slot, so the stage taps are the block outputs (as in timm's MobileNets)
and ``forward_features`` ends with the 1280-channel map. ``output_stride=16`` or ``8`` dilates the
depthwise convs of the last stage(s) instead of striding them, as timm's MobileNets do.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers import ClassifierHead, DropPath

from .. import convert
from ..blocks.channel_attn import EfficientChannelAttn
from ._base import Backbone, drop_path_rates, pretrained_cfg
from ._registry import register_family

__all__ = ["MobileNetV2Cfg", "EcaMobileNetV2", "VARIANTS", "checkpoint_filter_fn"]


@dataclass(frozen=True)
class MobileNetV2Cfg:
    #: rows of (expand ratio t, channels c, repeats n, first stride s), as in the paper's Table 2
    settings: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
    width_mult: float = 1.0
    stem_width: int = 32
    last_width: int = 1280
    eca_k3_min_chs: int = 96  # ECA k = 3 from this row width up, 1 below (official rule)

    def __post_init__(self):
        object.__setattr__(self, "settings", tuple(tuple(int(v) for v in row) for row in self.settings))
        if any(len(row) != 4 for row in self.settings) or self.settings[0][3] != 1:
            raise ValueError("MobileNetV2Cfg.settings rows are (t, c, n, s) and the first row must have s=1")


def _conv_bn(in_chs, out_chs, kernel=1, stride=1, groups=1, act=True, dilation=1, dd=None) -> nn.Sequential:
    layers = OrderedDict(conv=nn.Conv2d(in_chs, out_chs, kernel, stride, dilation * (kernel - 1) // 2, dilation,
                                        groups=groups, bias=False, **dd), bn=nn.BatchNorm2d(out_chs, **dd))
    if act:
        layers["act"] = nn.ReLU6(inplace=True)
    return nn.Sequential(layers)


class InvertedResidual(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, expand: int, eca_kernel: int,
                 drop_path: float = 0.0, dilation: int = 1, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden = int(round(in_chs * expand))
        self.conv_pw = _conv_bn(in_chs, hidden, dd=dd) if expand != 1 else nn.Identity()
        self.conv_dw = _conv_bn(hidden, hidden, 3, stride, groups=hidden, dilation=dilation, dd=dd)
        self.conv_pwl = _conv_bn(hidden, out_chs, act=False, dd=dd)
        self.attn = EfficientChannelAttn(out_chs, eca_kernel, **dd)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.attn(self.conv_pwl(self.conv_dw(self.conv_pw(x))))
        return x + self.drop_path(out) if self.has_skip else out


class EcaMobileNetV2(Backbone):
    """MobileNetV2 with ECA; ``output_stride`` 32, or 16 / 8 to dilate the last stage(s) instead of striding."""

    def __init__(self, cfg: MobileNetV2Cfg, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, output_stride: int = 32, device=None,
                 dtype=None):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
        dd = dict(device=device, dtype=dtype)
        self.cfg = cfg
        in_chs = int(cfg.stem_width * cfg.width_mult)
        self.stem = _conv_bn(in_chans, in_chs, 3, 2, dd=dd)
        dpr = iter(drop_path_rates(drop_path_rate, [sum(row[2] for row in cfg.settings)])[0])
        stages, chs, reductions, reduction, dilation = [[]], [], [], 2, 1
        for t, c, n, s in cfg.settings:
            out_chs = int(c * cfg.width_mult)
            first_dilation = dilation
            if s == 2:
                chs.append(in_chs)
                reductions.append(reduction)
                stages.append([])
                if reduction >= output_stride:  # dilate instead (the row's first block keeps the old dilation)
                    s, dilation = 1, dilation * 2
                else:
                    reduction *= 2
            for i in range(n):
                k = 3 if c >= cfg.eca_k3_min_chs else 1
                stages[-1].append(InvertedResidual(in_chs, out_chs, s if i == 0 else 1, t, k, next(dpr),
                                                   first_dilation if i == 0 else dilation, **dd))
                in_chs = out_chs
        chs.append(in_chs)
        reductions.append(reduction)
        self.stages = nn.Sequential(*[nn.Sequential(*blocks) for blocks in stages])
        last = int(cfg.last_width * max(1.0, cfg.width_mult))
        self.norm = _conv_bn(in_chs, last, dd=dd)
        self.head = ClassifierHead(last, num_classes, global_pool, drop_rate, **dd)
        self._finish(in_chans, num_classes, chs, reductions, global_pool, num_features=last)
        self.init_weights()

    @staticmethod
    def num_stages(cfg: MobileNetV2Cfg) -> int:  # stages are grouped by output stride
        return 1 + sum(1 for row in cfg.settings if row[3] == 2)

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def _official_rules(model: EcaMobileNetV2) -> list[tuple[str, str]]:
    """``features.{i}`` (one flat list in the official code) -> ``stages.{s}.{j}``."""
    rules = [(r"^features\.0\.0\.", "stem.conv."), (r"^features\.0\.1\.", "stem.bn."),
             (r"^classifier\.1\.", "head.fc.")]
    idx = 1
    for s, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            parts = (["conv_pw"] if not isinstance(block.conv_pw, nn.Identity) else []) + ["conv_dw"]
            pre = f"stages.{s}.{j}."
            for p, name in enumerate(parts):
                rules += [(rf"^features\.{idx}\.conv\.{p}\.0\.", pre + name + ".conv."),
                          (rf"^features\.{idx}\.conv\.{p}\.1\.", pre + name + ".bn.")]
            p = len(parts)
            rules += [(rf"^features\.{idx}\.conv\.{p}\.", pre + "conv_pwl.conv."),
                      (rf"^features\.{idx}\.conv\.{p + 1}\.", pre + "conv_pwl.bn."),
                      (rf"^features\.{idx}\.conv\.{p + 2}\.conv\.", pre + "attn.conv.")]
            idx += 1
    rules += [(rf"^features\.{idx}\.0\.", "norm.conv."), (rf"^features\.{idx}\.1\.", "norm.bn.")]
    return rules


def checkpoint_filter_fn(state_dict, model):
    """visionzoo or official ECANet ``ECA_MobileNetV2`` keys -> visionzoo keys."""
    return convert.remap(state_dict, model, {"official": lambda sd: convert.rename(sd, _official_rules(model))})


def _official(kw: dict):
    kw = convert.check_official_kwargs("eca_mobilenet_v2", kw, {"num_classes", "width_mult"})
    overrides = dict(width_mult=float(kw.get("width_mult", 1.0)))
    return "eca_mobilenet_v2", overrides, dict(num_classes=kw.get("num_classes", 1000))


VARIANTS = {"eca_mobilenet_v2": MobileNetV2Cfg()}

register_family(
    __name__, "eca_mobilenetv2", EcaMobileNetV2, VARIANTS,
    {"eca_mobilenet_v2": pretrained_cfg(
        paper=("ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks", "arXiv:1910.03151"),
        origin_url="https://github.com/BangguWu/ECANet", first_conv="stem.conv", load="the official checkpoint",
        interpolation="bilinear")},
    checkpoint_filter_fn,
    meta={"eca_mobilenet_v2": dict(official_params_key="eca_mobilenet_v2", top1=72.56, top1_source="ECANet README")},
    official={"eca_mobilenet_v2": _official},
    paper="ECA-Net MobileNetV2",
    tiny=lambda cfg: dict(width_mult=0.25, settings=tuple((t, c, 1, s) for t, c, _, s in cfg.settings)),
)
