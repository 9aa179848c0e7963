"""ResNets with pluggable channel attention: SE-ResNet/ResNeXt (SENet), ECA-ResNet, CBAM-ResNet.

One generic ResNet (:class:`ChannelAttnResNet`) and a table of official variants. The attention
sits after the last BN of every residual branch, before the addition, in all three papers.

Layouts: ECA and CBAM are torchvision v1.5 ResNets (stride in the 3x3). SE-ResNet follows the
Caffe SENet (stride in the first 1x1, max-pool with ``ceil_mode``); SE-ResNeXt puts the stride in the
grouped 3x3. Checkpoints: the official ECANet and attention-module (CBAM) layouts and timm's
``legacy_se*`` ports convert automatically (:func:`checkpoint_filter_fn`).

Any input size works: pooling is global (the official CBAM's ``AvgPool2d(7)`` equals it at 224).

Feature levels follow timm's ResNets: level 0 is the stem's stride-2 map (after its ReLU, before the max-pool),
levels 1-4 the stages (strides 4-32), so ``out_indices=(1, 2, 3, 4)`` are the four stages. ``output_stride=16``
or ``8`` dilates the last stage(s) instead of striding them (DeepLab), as timm's ResNets do.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import dataclasses

import torch
import torch.nn as nn
from timm.layers import ClassifierHead, DropPath, register_notrace_module

from .. import convert
from ..blocks import fused_eval
from ..blocks.channel_attn import create_channel_attn
from ..blocks.channels_last import ChannelsLastStem
from ._base import Backbone, drop_path_rates, pretrained_cfg
from ._registry import register_family

__all__ = ["ResNetCfg", "ChannelAttnResNet", "VARIANTS", "checkpoint_filter_fn"]


@dataclass(frozen=True)
class ResNetCfg:
    block: str = "bottleneck"  # 'basic' | 'bottleneck'
    depths: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)  # planes per stage (bottleneck output = 4x)
    stem_width: int = 64
    stem_kernel: int = 7  # 7x7 s2 (ImageNet) or 3x3 s1 (CIFAR)
    stem_pool: str = "torch"  # 'torch': 3x3 s2 p1 | 'caffe': 3x3 s2 ceil_mode | 'none'
    groups: int = 1
    base_width: int = 64  # ResNeXt: bottleneck width = floor(planes * base_width / 64) * groups
    stride_in_1x1: bool = False  # Caffe SENet layout
    attn: str | None = None  # 'se' | 'eca' | 'cbam' | None
    attn_reduction: int = 16
    attn_kernel_sizes: tuple[int, ...] | None = None  # ECA: k per stage (None: the paper's adaptive rule)

    def __post_init__(self):
        for name in ("depths", "widths", "attn_kernel_sizes"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"ResNetCfg.block must be 'basic' or 'bottleneck', got {self.block!r}")
        if self.stem_pool not in ("torch", "caffe", "none"):
            raise ValueError(f"ResNetCfg.stem_pool must be 'torch', 'caffe' or 'none', got {self.stem_pool!r}")
        if len(self.depths) != len(self.widths) or not self.depths:
            raise ValueError(f"ResNetCfg: depths {self.depths} and widths {self.widths} need the same non-zero length")
        if self.attn_kernel_sizes is not None and len(self.attn_kernel_sizes) != len(self.depths):
            raise ValueError(f"ResNetCfg.attn_kernel_sizes needs one entry per stage, got {self.attn_kernel_sizes}")

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1


def _conv_bn(in_chs, out_chs, kernel, stride=1, groups=1, dilation=1, dd=None):
    return (nn.Conv2d(in_chs, out_chs, kernel, stride, dilation * (kernel - 1) // 2, dilation, groups=groups,
                      bias=False, **dd),
            nn.BatchNorm2d(out_chs, **dd))


@register_notrace_module  # an FX leaf: its oneDNN inference path is chosen per call, as in eager
class ResidualBlock(nn.Module):
    """Basic (two 3x3) or bottleneck (1x1-3x3-1x1) residual block with channel attention.

    ``dilation``: of the 3x3 convs; ``first_dilation`` (default ``dilation``) of the first 3x3, which a dilated
    stage's first block keeps at the previous stage's dilation (timm's ResNet rule)."""

    def __init__(self, cfg: ResNetCfg, in_chs: int, planes: int, stride: int, attn_kwargs: dict,
                 drop_path: float = 0.0, dilation: int = 1, first_dilation: int | None = None, device=None,
                 dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        out_chs = planes * cfg.expansion
        first_dilation = first_dilation or dilation
        if cfg.block == "basic":
            self.conv1, self.bn1 = _conv_bn(in_chs, planes, 3, stride, dilation=first_dilation, dd=dd)
            self.conv2, self.bn2 = _conv_bn(planes, out_chs, 3, dilation=dilation, dd=dd)
            self.conv3 = self.bn3 = None
        else:
            width = int(planes * cfg.base_width / 64) * cfg.groups
            s1, s3 = (stride, 1) if cfg.stride_in_1x1 else (1, stride)
            self.conv1, self.bn1 = _conv_bn(in_chs, width, 1, s1, dd=dd)
            self.conv2, self.bn2 = _conv_bn(width, width, 3, s3, groups=cfg.groups, dilation=first_dilation, dd=dd)
            self.conv3, self.bn3 = _conv_bn(width, out_chs, 1, dd=dd)
        self.act = nn.ReLU(inplace=True)
        self.attn = create_channel_attn(cfg.attn, out_chs, **attn_kwargs, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(*_conv_bn(in_chs, out_chs, 1, stride, dd=dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # a static branch: TorchScript compiles the plain modules only
            if self._fused_applies(x):
                return self._forward_fused(x)
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.conv3 is not None:
            out = self.bn3(self.conv3(self.act(out)))
        out = self.drop_path(self.attn(out))
        return self.act(out + shortcut)

    def _fused_applies(self, x: torch.Tensor) -> bool:
        ds_bn = None if self.downsample is None else self.downsample[1]
        return fused_eval.applies(self, x) and all(fused_eval.bn_foldable(bn) for bn in
                                                   (self.bn1, self.bn2, self.bn3, ds_bn))

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: every Conv-BN(-ReLU) as one oneDNN convolution with the BN folded in."""
        def conv_bn(i: int, conv: nn.Conv2d, bn: nn.BatchNorm2d, act, inp: torch.Tensor) -> torch.Tensor:
            return fused_eval.conv_act(inp, *fused_eval.conv_bn_folded(self, f"_fold{i}", conv, bn), conv, act)

        relu, none = ("relu", ""), fused_eval.NO_ACT
        shortcut = x if self.downsample is None else conv_bn(0, *self.downsample, none, x)
        out = conv_bn(1, self.conv1, self.bn1, relu, x)
        if self.conv3 is None:
            out = conv_bn(2, self.conv2, self.bn2, none, out)
        else:
            out = conv_bn(3, self.conv3, self.bn3, none, conv_bn(2, self.conv2, self.bn2, relu, out))
        return self.act(self.attn(out) + shortcut)


class ChannelAttnResNet(Backbone):
    """ResNet family over :class:`ResNetCfg` (see the module docstring).

    Args:
        output_stride: 32, or 16 / 8 to dilate the last one / two stages instead of striding them.
    """

    def __init__(self, cfg: ResNetCfg, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, output_stride: int = 32, device=None,
                 dtype=None):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
        dd = dict(device=device, dtype=dtype)
        self.cfg = cfg
        stem_stride = 2 if cfg.stem_kernel == 7 else 1
        conv, bn = _conv_bn(in_chans, cfg.stem_width, cfg.stem_kernel, stem_stride, dd=dd)
        stem = OrderedDict(conv=conv, bn=bn, act=nn.ReLU(inplace=True))
        if cfg.stem_pool == "torch":
            stem["pool"] = nn.MaxPool2d(3, 2, 1)
        elif cfg.stem_pool == "caffe":
            stem["pool"] = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.stem = ChannelsLastStem(stem)
        stem_level = (cfg.stem_width, stem_stride)
        reduction = stem_stride * (2 if cfg.stem_pool != "none" else 1)

        in_chs, stages, chs, reductions, dilation = cfg.stem_width, [], [], [], 1
        for i, (depth, planes, dpr) in enumerate(zip(cfg.depths, cfg.widths, drop_path_rates(drop_path_rate,
                                                                                               cfg.depths))):
            stride, first_dilation = 1 if i == 0 else 2, dilation
            if stride == 2 and reduction >= output_stride:
                stride, dilation = 1, dilation * 2
            reduction *= stride
            attn_kwargs = {}
            if cfg.attn in ("se", "cbam"):
                attn_kwargs["reduction"] = cfg.attn_reduction
            elif cfg.attn == "eca" and cfg.attn_kernel_sizes is not None:
                attn_kwargs["kernel_size"] = cfg.attn_kernel_sizes[i]
            blocks = []
            for j in range(depth):
                blocks.append(ResidualBlock(cfg, in_chs, planes, stride if j == 0 else 1, attn_kwargs, dpr[j], dilation,
                                            first_dilation if j == 0 else dilation, **dd))
                in_chs = planes * cfg.expansion
            stages.append(nn.Sequential(*blocks))
            chs.append(in_chs)
            reductions.append(reduction)
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()
        self.head = ClassifierHead(in_chs, num_classes, global_pool, drop_rate, **dd)
        self._finish(in_chans, num_classes, chs, reductions, global_pool, stem_level=stem_level)
        self.init_weights()

    @staticmethod
    def num_stages(cfg: ResNetCfg) -> int:  # the stem level and the stages
        return len(cfg.depths) + 1

    def _stem_with_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stem = self.stem
        tap = stem.act(stem.bn(stem.conv(x.contiguous(memory_format=torch.channels_last))))
        return (stem.pool(tap) if hasattr(stem, "pool") else tap), tap

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if hasattr(m, "init_weights") and m is not self:
                m.init_weights()


# ---- checkpoint conversion ----------------------------------------------------------------------
_TORCHVISION_RULES = [(r"^conv1\.", "stem.conv."), (r"^bn1\.", "stem.bn."), (r"^fc\.", "head.fc.")]
_OFFICIAL_RULES = _TORCHVISION_RULES + [
    (r"^layer(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}."),
    (r"\.eca\.conv\.", ".attn.conv."),
    (r"\.cbam\.ChannelGate\.mlp\.1\.", ".attn.channel.mlp.fc1."),
    (r"\.cbam\.ChannelGate\.mlp\.3\.", ".attn.channel.mlp.fc2."),
    (r"\.cbam\.SpatialGate\.spatial\.", ".attn.spatial."),
]
_TIMM_LEGACY_RULES = [
    (r"^layer0\.conv1\.", "stem.conv."), (r"^layer0\.bn1\.", "stem.bn."), (r"^last_linear\.", "head.fc."),
    (r"^layer(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}."),
    (r"\.se_module\.fc(\d)\.", r".attn.mlp.fc\1."),
]


def _linear_to_conv(key: str, value: torch.Tensor) -> torch.Tensor:
    return value[:, :, None, None] if ".mlp.fc" in key and key.endswith("weight") and value.ndim == 2 else value


def checkpoint_filter_fn(state_dict, model):
    """visionzoo, official (ECANet / attention-module) or timm ``legacy_se*`` keys -> visionzoo keys."""
    return convert.remap(state_dict, model, {
        "official": lambda sd: convert.rename(sd, _OFFICIAL_RULES, _linear_to_conv),
        "timm": lambda sd: convert.rename(sd, _TIMM_LEGACY_RULES),
    })


# ---- official constructor calls -> visionzoo configs --------------------------------------------
def _official_widths(kw: dict) -> dict:
    base = kw.pop("base_width", 64)
    return dict(stem_width=base, widths=tuple(base * m for m in (1, 2, 4, 8)))


def _block_kind(block, names: dict) -> str:
    block = getattr(block, "__name__", block)
    if block not in names:
        raise ValueError(f"from_official: block must be one of {sorted(names)}, got {block!r}")
    return names[block]


def _official_eca(kw: dict):
    kw = convert.check_official_kwargs("eca_resnet", kw, {"block", "layers", "num_classes", "k_size", "base_width"})
    block = _block_kind(kw.pop("block", "ECABottleneck"), {"ECABasicBlock": "basic", "ECABottleneck": "bottleneck"})
    k = tuple(int(x) for x in kw.pop("k_size", (3, 3, 3, 3)))
    overrides = dict(block=block, depths=tuple(kw.pop("layers")), attn="eca", attn_kernel_sizes=k,
                     **_official_widths(kw))
    variant = "eca_resnet18" if block == "basic" else "eca_resnet50"
    return variant, overrides, dict(num_classes=kw.pop("num_classes", 1000))


def _official_cbam(kw: dict):
    kw = convert.check_official_kwargs("cbam_resnet", kw, {"block", "layers", "network_type", "num_classes", "att_type",
                                                           "base_width"})
    block = _block_kind(kw.pop("block", "Bottleneck"), {"BasicBlock": "basic", "Bottleneck": "bottleneck"})
    att = kw.pop("att_type", None)
    if att not in (None, "CBAM"):
        raise NotImplementedError(f"from_official('cbam_resnet'): att_type={att!r} is not implemented "
                                  "(only 'CBAM' or None)")
    network = kw.pop("network_type", "ImageNet")
    if network not in ("ImageNet", "CIFAR10", "CIFAR100"):
        raise ValueError(f"from_official('cbam_resnet'): network_type must be ImageNet/CIFAR10/CIFAR100, "
                         f"got {network!r}")
    stem = {} if network == "ImageNet" else dict(stem_kernel=3, stem_pool="none")
    overrides = dict(block=block, depths=tuple(kw.pop("layers")), attn="cbam" if att else None, **stem,
                     **_official_widths(kw))
    variant = "cbam_resnet18" if block == "basic" else "cbam_resnet50"
    return variant, overrides, dict(num_classes=kw.pop("num_classes", 1000))


def _official_senet(kw: dict):
    """timm's ``SENet`` (the Caffe port) constructor arguments."""
    kw = convert.check_official_kwargs("senet", kw, {
        "block", "layers", "groups", "reduction", "num_classes", "inplanes", "input_3x3", "downsample_kernel_size",
        "downsample_padding", "drop_rate", "in_chans", "global_pool"})
    block = getattr(kw.get("block"), "__name__", kw.get("block"))
    if block not in ("SEResNetBottleneck", "SEResNeXtBottleneck", "SEResNetBlock") or kw.get("input_3x3") \
            or kw.get("downsample_kernel_size", 1) != 1 or kw.get("inplanes", 64) != 64:
        raise NotImplementedError(f"from_official('senet'): only SE-ResNet/SE-ResNeXt layouts are implemented, "
                                  f"got {kw}")
    overrides = dict(depths=tuple(kw["layers"]), groups=kw.get("groups", 1), attn="se",
                     attn_reduction=kw.get("reduction", 16), stem_pool="caffe",
                     block="basic" if block == "SEResNetBlock" else "bottleneck",
                     stride_in_1x1=block == "SEResNetBottleneck",
                     base_width=4 if block == "SEResNeXtBottleneck" else 64)
    model_kwargs = {k: kw[k] for k in ("num_classes", "drop_rate", "in_chans", "global_pool") if k in kw}
    return "se_resnet50", overrides, model_kwargs


# ---- variants -----------------------------------------------------------------------------------
_R18, _R34, _R50, _R101, _R152 = (2, 2, 2, 2), (3, 4, 6, 3), (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3)
_SE = ResNetCfg(attn="se", stem_pool="caffe", stride_in_1x1=True)
_SEX = ResNetCfg(attn="se", stem_pool="caffe", groups=32, base_width=4)
_ECA = ResNetCfg(attn="eca")
_CBAM = ResNetCfg(attn="cbam")

VARIANTS = {
    "se_resnet50": _SE,
    "se_resnet101": dataclasses.replace(_SE, depths=_R101),
    "se_resnet152": dataclasses.replace(_SE, depths=_R152),
    "se_resnext50_32x4d": _SEX,
    "se_resnext101_32x4d": dataclasses.replace(_SEX, depths=_R101),
    "eca_resnet18": dataclasses.replace(_ECA, block="basic", depths=_R18, attn_kernel_sizes=(3, 5, 7, 7)),
    "eca_resnet34": dataclasses.replace(_ECA, block="basic", depths=_R34, attn_kernel_sizes=(3, 3, 5, 7)),
    "eca_resnet50": dataclasses.replace(_ECA, depths=_R50, attn_kernel_sizes=(3, 5, 5, 7)),
    "eca_resnet101": dataclasses.replace(_ECA, depths=_R101, attn_kernel_sizes=(3, 3, 5, 7)),
    "eca_resnet152": dataclasses.replace(_ECA, depths=_R152, attn_kernel_sizes=(3, 3, 5, 7)),
    "cbam_resnet18": dataclasses.replace(_CBAM, block="basic", depths=_R18),
    "cbam_resnet34": dataclasses.replace(_CBAM, block="basic", depths=_R34),
    "cbam_resnet50": _CBAM,
    "cbam_resnet101": dataclasses.replace(_CBAM, depths=_R101),
}

_PAPERS = {
    "se": ("Squeeze-and-Excitation Networks", "arXiv:1709.01507", "https://github.com/hujie-frank/SENet"),
    "eca": ("ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks", "arXiv:1910.03151",
            "https://github.com/BangguWu/ECANet"),
    "cbam": ("CBAM: Convolutional Block Attention Module", "arXiv:1807.06521",
             "https://github.com/Jongchan/attention-module"),
}

#: name -> (official_params.json key, official ImageNet top-1 or None, where the top-1 comes from)
_FACTS = {
    "se_resnet50": ("SE-ResNet-50", 77.63, "SENet README (top-1 err 22.37)"),
    "se_resnet101": ("SE-ResNet-101", 78.25, "SENet README (top-1 err 21.75)"),
    "se_resnet152": ("SE-ResNet-152", 78.66, "SENet README (top-1 err 21.34)"),
    "se_resnext50_32x4d": ("SE-ResNeXt-50", 79.03, "SENet README (top-1 err 20.97)"),
    "se_resnext101_32x4d": ("SE-ResNeXt-101", 80.19, "SENet README (top-1 err 19.81)"),
    "eca_resnet18": ("eca_resnet18_k3577", 70.92, "ECANet README"),
    "eca_resnet34": ("eca_resnet34_k3357", 74.21, "ECANet README"),
    "eca_resnet50": ("eca_resnet50_k3557", 77.42, "ECANet README"),
    "eca_resnet101": ("eca_resnet101_k3357", 78.65, "ECANet README"),
    "eca_resnet152": ("eca_resnet152_k3357", 78.92, "ECANet README"),
    "cbam_resnet18": ("resnet18_cbam", None, "no released weights"),
    "cbam_resnet34": ("resnet34_cbam", None, "no released weights"),
    "cbam_resnet50": ("resnet50_cbam", 77.62, "attention-module README (100 epochs)"),
    "cbam_resnet101": ("resnet101_cbam", None, "no released weights"),
}


def _pretrained_cfg(name: str) -> dict:
    paper, paper_id, origin = _PAPERS[VARIANTS[name].attn]
    return pretrained_cfg(paper=(paper, paper_id), origin_url=origin, first_conv="stem.conv",
                          load="the official (or timm legacy_se*) checkpoint", interpolation="bilinear")


def tiny(cfg: ResNetCfg) -> dict:
    return dict(depths=(1,) * len(cfg.depths), widths=(8, 16, 32, 64), stem_width=8,
                **({"groups": 4, "base_width": 8} if cfg.groups > 1 else {}))


register_family(
    __name__, "ca_resnet", ChannelAttnResNet, VARIANTS, {n: _pretrained_cfg(n) for n in VARIANTS},
    checkpoint_filter_fn,
    meta={n: dict(official_params_key=f[0], top1=f[1], top1_source=f[2]) for n, f in _FACTS.items()},
    official={"eca_resnet": _official_eca, "cbam_resnet": _official_cbam, "senet": _official_senet},
    paper="SE / ECA / CBAM channel attention in ResNets", tiny=tiny, aliases={"layers": "depths"},
)
