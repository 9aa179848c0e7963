"""MaxViT (Tu et al., *MaxViT: Multi-Axis Vision Transformer*, ECCV 2022; TensorFlow
``google-research/maxvit``), in the TF-compatible form of timm's ``maxvit_*_tf_*`` ports.

Stem: 3x3 stride-2 conv -> BN + GELU(tanh) -> 3x3 conv. Four stages of MaxViT blocks; a block is
MBConv (pre-norm BN, 1x1 expand x4, BN-GELU, depthwise 3x3 (stride 2 in a stage's first block),
BN-GELU, SE with ``0.25 x`` the block width and SiLU, 1x1 project with bias; the strided shortcut
is a 2x2 average pool + 1x1 conv) -> block attention + MLP -> grid attention + MLP (pre-LN,
GELU(tanh), head dim 32). Convolutions and pools use TF 'SAME' padding, BN eps 1e-3, LN eps 1e-5.
Head: average pool, LayerNorm, Linear + tanh pre-logits, Linear.

Block and grid attention are :class:`~visionzoo.blocks.multi_axis_attn.PartitionAttn2d`, i.e.
``na2d`` with ``stride = window`` and ``dilation = map // grid``. Any input size: the attention
pads to the partition size and masks the padding; the window (7 / 12 / 16 for the 224 / 384 /
512 variants) is part of the config, and the converter resizes bias tables of another window.
The trunk runs channels-last, so the NCHW <-> NHWC switches around attention are free views.
Inference (eval, autograd off, fp32 CPU) runs through :mod:`~visionzoo.blocks.fused_eval`: MBConv's
pre-norm, 1x1 conv and BN-GELU, and its depthwise conv and BN-GELU, are two oneDNN convolutions with
the BNs folded and GELU as a post-op; fc1 + GELU and fc2 + residual are single oneDNN GEMMs (ATen's
tanh-GELU pass alone took a quarter of the forward).

Keys are timm's (``stem.conv1``, ``stages.{i}.blocks.{j}.{conv,attn_block,attn_grid}``,
``head.{norm,pre_logits.fc,fc}``); ``create_model(name, checkpoint_path=...)`` takes a timm
``maxvit_*_tf_*`` state_dict (TF-ported weights) directly.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
from timm.layers import (DropPath, LayerNorm2d, Mlp, NormMlpClassifierHead, SEModule, create_conv2d, create_pool2d,
                         get_norm_act_layer, make_divisible)
from timm.layers import register_notrace_module
from timm.layers.padding import is_static_pad

from .. import convert
from ..blocks import fused_eval
from ..blocks.channels_last import ChannelsLastStem
from ..blocks.multi_axis_attn import PartitionAttn2d, resize_rel_pos_table
from ..blocks.same_pad import AvgPool2dSame, Conv2dSame, pad_same
from ._base import Backbone, Stage, drop_path_rates, init_linear_trunc_normal, pretrained_cfg
from ._checks import check_image_batch
from ._registry import register_family

__all__ = ["MaxViTCfg", "MaxViT", "VARIANTS"]


@dataclass(frozen=True)
class MaxViTCfg:
    widths: tuple[int, ...] = (64, 128, 256, 512)
    depths: tuple[int, ...] = (2, 2, 5, 2)
    stem_width: int = 64
    #: block-attention window = grid size (7 at 224, 12 at 384, 16 at 512)
    window: int = 7
    head_dim: int = 32
    expand_ratio: float = 4.0
    se_ratio: float = 0.25
    mlp_ratio: float = 4.0
    #: TF compatibility: 'same' padding, BN eps, GELU(tanh)
    padding: str = "same"
    bn_eps: float = 1e-3
    ln_eps: float = 1e-5
    act: str = "gelu_tanh"

    def __post_init__(self):
        if len(self.widths) != len(self.depths):
            raise ValueError(f"MaxViTCfg: widths {self.widths} and depths {self.depths} differ in length")
        if any(d % self.head_dim for d in self.widths):
            raise ValueError(f"MaxViTCfg: widths {self.widths} must be multiples of head_dim {self.head_dim}")
        if self.window < 1:
            raise ValueError(f"MaxViTCfg: window must be >= 1, got {self.window}")


def _conv(in_chs: int, out_chs: int, kernel_size: int, stride: int, padding: str, **kwargs) -> nn.Module:
    """timm's ``create_conv2d``; a strided TF 'SAME' conv is :class:`~visionzoo.blocks.same_pad.Conv2dSame`
    (timm's parameters and keys, padding arithmetic that exports with dynamic H, W)."""
    if padding == "same" and not is_static_pad(kernel_size, stride):
        return Conv2dSame(in_chs, out_chs, kernel_size, stride, **kwargs)
    return create_conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding, **kwargs)


class Shortcut(nn.Module):
    """Strided MBConv shortcut: 2x2 average pool ('same' padding), then a 1x1 conv to the new width."""

    def __init__(self, in_chs: int, out_chs: int, padding: str, device=None, dtype=None):
        super().__init__()
        self.pool = AvgPool2dSame(2) if padding == "same" else create_pool2d("avg", 2, padding=padding)
        self.expand = nn.Conv2d(in_chs, out_chs, 1, device=device, dtype=dtype) if in_chs != out_chs else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.pool(x))


@register_notrace_module  # an FX leaf: its oneDNN inference path is chosen per call, as in eager
class MBConv(nn.Module):
    """Pre-norm MBConv with SE (keys as timm's ``MbConvBlock``)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, cfg: MaxViTCfg, drop_path: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        norm_act = partial(get_norm_act_layer("batchnorm2d", cfg.act), eps=cfg.bn_eps)
        mid = make_divisible(out_chs * cfg.expand_ratio)
        self.shortcut = Shortcut(in_chs, out_chs, cfg.padding, **dd) if stride == 2 else nn.Identity()
        self.pre_norm = norm_act(in_chs, apply_act=False, **dd)
        self.conv1_1x1 = create_conv2d(in_chs, mid, 1, **dd)
        self.norm1 = norm_act(mid, **dd)
        self.conv2_kxk = _conv(mid, mid, 3, stride, cfg.padding, groups=mid, bias=False, **dd)
        self.norm2 = norm_act(mid, **dd)
        self.se = SEModule(mid, rd_channels=int(cfg.se_ratio * out_chs), act_layer=nn.SiLU, **dd)
        self.conv3_1x1 = create_conv2d(mid, out_chs, 1, bias=True, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.conv3_1x1(self.se(self._convs(x)))) + self.shortcut(x)

    def _convs(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-norm, 1x1 conv, BN-act, depthwise conv, BN-act."""
        if not torch.jit.is_scripting():  # a static branch: TorchScript compiles the plain modules only
            acts = self._fused_acts() if fused_eval.applies(self, x) else None
            if acts is not None:
                return self._fused_convs(x, acts)
        return self.norm2(self.conv2_kxk(self.norm1(self.conv1_1x1(self.pre_norm(x)))))

    def _fused_acts(self):
        norms = self.pre_norm, self.norm1, self.norm2
        if not all(fused_eval.bn_foldable(n) for n in norms) or not all(hasattr(n, "act") for n in norms[1:]):
            return None
        acts = fused_eval.fused_act(self.norm1.act), fused_eval.fused_act(self.norm2.act)
        return None if None in acts else acts

    def _fused_convs(self, x: torch.Tensor, acts: tuple) -> torch.Tensor:
        """Inference: pre-norm + 1x1 + BN-act, then depthwise + BN-act, as two oneDNN convolutions."""
        act1, act2 = acts
        c1, c2 = self.conv1_1x1, self.conv2_kxk
        w1, b1 = fused_eval.conv_bn_folded(self, "_fold1", c1, self.norm1, self.pre_norm)
        w2, b2 = fused_eval.conv_bn_folded(self, "_fold2", c2, self.norm2)
        x = fused_eval.conv_act(x, w1, b1, c1, act1)
        padding = None
        if isinstance(c2, Conv2dSame):  # TF 'SAME' of a strided conv: explicit (asymmetric) zero pad
            x, padding = pad_same(x, c2.kernel_size, c2.stride, c2.dilation), (0, 0)
        return fused_eval.conv_act(x, w2, b2, c2, act2, padding)


@register_notrace_module  # an FX leaf: its oneDNN inference path is chosen per call, as in eager
class PartitionBlock(nn.Module):
    """Pre-LN block or grid attention + MLP on ``[B, H, W, C]`` (keys as timm's ``PartitionAttentionCl``)."""

    def __init__(self, dim: int, partition: str, cfg: MaxViTCfg, drop_path: float = 0.0, backend: str | None = None,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, eps=cfg.ln_eps, **dd)
        self.attn = PartitionAttn2d(dim, cfg.head_dim, partition, cfg.window, backend=backend, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=cfg.ln_eps, **dd)
        act = nn.GELU(approximate="tanh") if cfg.act == "gelu_tanh" else nn.GELU()
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), act_layer=lambda: act, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        if not torch.jit.is_scripting():  # a static branch: TorchScript compiles the plain modules only
            if fused_eval.mlp_applies(self, self.mlp, x):  # inference: two oneDNN GEMMs
                return fused_eval.mlp_add(self, self.mlp, self.norm2(x), x)
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class MaxViTBlock(nn.Module):
    """MBConv (NCHW) -> block attention -> grid attention (NHWC views of the channels-last trunk)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, cfg: MaxViTCfg, drop_path: float = 0.0,
                 backend: str | None = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = MBConv(in_chs, out_chs, stride, cfg, drop_path, **dd)
        self.attn_block = PartitionBlock(out_chs, "block", cfg, drop_path, backend, **dd)
        self.attn_grid = PartitionBlock(out_chs, "grid", cfg, drop_path, backend, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)  # a view when x is channels-last
        return self.attn_grid(self.attn_block(x)).permute(0, 3, 1, 2)


def _stem(in_chs: int, out_chs: int, cfg: MaxViTCfg, dd: dict) -> ChannelsLastStem:
    """3x3 stride-2 conv, BN + act, 3x3 conv (keys ``conv1``, ``norm1``, ``conv2``), run channels-last:
    the whole trunk follows (oneDNN's native format)."""
    return ChannelsLastStem(OrderedDict(
        conv1=_conv(in_chs, out_chs, 3, 2, cfg.padding, bias=True, **dd),
        norm1=get_norm_act_layer("batchnorm2d", cfg.act)(out_chs, eps=cfg.bn_eps, **dd),
        conv2=create_conv2d(out_chs, out_chs, 3, stride=1, padding=cfg.padding, bias=True, **dd)))


class MaxViT(Backbone):
    """MaxViT over :class:`MaxViTCfg`.

    Args:
        cfg: architecture.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, linear over all blocks.
        backend: ``na2d`` backend of every attention (``None``: resolved per call).
    """

    nwd_patterns = ("*.relative_position_bias_table",)

    def __init__(self, cfg: MaxViTCfg, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, backend: str | None = None,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.cfg = cfg
        self.stem = _stem(in_chans, cfg.stem_width, cfg, dd)
        stages, in_chs = [], cfg.stem_width
        for depth, dim, dpr in zip(cfg.depths, cfg.widths, drop_path_rates(drop_path_rate, cfg.depths)):
            stages.append(Stage(nn.Identity(), [MaxViTBlock(in_chs if j == 0 else dim, dim, 2 if j == 0 else 1, cfg,
                                                   dpr[j], backend, **dd) for j in range(depth)]))
            in_chs = dim
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()
        width = cfg.widths[-1]
        self.head = NormMlpClassifierHead(width, num_classes, hidden_size=width, pool_type=global_pool,
                                          drop_rate=drop_rate, norm_layer=partial(LayerNorm2d, eps=cfg.ln_eps),
                                          act_layer="tanh", **dd)
        self._finish(in_chans, num_classes, cfg.widths, [4 * 2 ** i for i in range(len(cfg.depths))], global_pool)
        self.head_hidden_size = width
        self.apply(init_linear_trunc_normal)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript has no super(): the base's scripted path (no checkpointing)
            check_image_batch(x, self.in_chans)
            x = self.norm(self.stages(self.stem(x)))
        else:
            x = super().forward_features(x)
        return x.contiguous()

    def forward_intermediates(self, x: torch.Tensor, *args, **kwargs):
        out = super().forward_intermediates(x, *args, **kwargs)
        if isinstance(out, tuple):
            return out[0].contiguous(), [t.contiguous() for t in out[1]]
        return [t.contiguous() for t in out]


# ---- checkpoint conversion ----------------------------------------------------------------------
def _resize_tables(model: MaxViT):
    """timm's MaxViT keys equal ours; bias tables of another window are resized (bicubic)."""
    def fn(sd: dict) -> dict:
        return {k: resize_rel_pos_table(v, model.cfg.window) if k.endswith("relative_position_bias_table") else v
                for k, v in sd.items()}
    return fn


def checkpoint_filter_fn(state_dict, model: MaxViT):
    """visionzoo / timm ``maxvit_*_tf_*`` keys (identical) -> visionzoo; tables resized to the window."""
    sd = convert.unwrap_state_dict(state_dict)
    return convert.remap(_resize_tables(model)(sd), model, {})


# ---- variants -----------------------------------------------------------------------------------
_SIZES = {
    "tiny": dict(widths=(64, 128, 256, 512), depths=(2, 2, 5, 2), stem_width=64),
    "small": dict(widths=(96, 192, 384, 768), depths=(2, 2, 5, 2), stem_width=64),
    "base": dict(widths=(96, 192, 384, 768), depths=(2, 6, 14, 2), stem_width=64),
    "large": dict(widths=(128, 256, 512, 1024), depths=(2, 6, 14, 2), stem_width=128),
    "xlarge": dict(widths=(192, 384, 768, 1536), depths=(2, 6, 14, 2), stem_width=192),
}
#: registered (size, resolution) pairs: those with a reference parameter count (timm's TF ports);
#: other resolutions are one override away, e.g. create_model("maxvit_small", window=16) for 512
_RES = {"tiny": (224, 384, 512), "small": (224, 384), "base": (224, 384), "large": (224, 384), "xlarge": (224, 384)}
_TOP1 = {("tiny", 224): 83.62, ("tiny", 384): 85.24, ("tiny", 512): 85.72, ("small", 224): 84.45,
         ("small", 384): 85.74, ("base", 224): 84.95, ("base", 384): 86.34, ("large", 224): 85.17,
         ("large", 384): 86.40}


def _name(size: str, res: int) -> str:
    return f"maxvit_{size}" if res == 224 else f"maxvit_{size}_{res}"


VARIANTS = {_name(s, r): MaxViTCfg(**_SIZES[s], window=r // 32) for s, rs in _RES.items() for r in rs}
_KEYS = {_name(s, r): (s, r) for s, rs in _RES.items() for r in rs}


def _pretrained_cfg(res: int) -> dict:
    return pretrained_cfg(paper=("MaxViT: Multi-Axis Vision Transformer", "arXiv:2204.01697"),
                          origin_url="https://github.com/google-research/maxvit", first_conv="stem.conv1",
                          load="a timm maxvit_*_tf_* state_dict (the TF-ported official weights)", size=res,
                          crop_pct=0.95 if res == 224 else 1.0, crop_mode="squash" if res != 224 else "center")


register_family(
    __name__, "maxvit", MaxViT, VARIANTS, {n: _pretrained_cfg(r) for n, (_, r) in _KEYS.items()},
    checkpoint_filter_fn,
    meta={n: dict(official_params_key=f"maxvit_{s}_tf_{r}",
                  **({"top1": _TOP1[(s, r)], "top1_source": "MaxViT README (ImageNet-1k)"} if (s, r) in _TOP1 else {}))
          for n, (s, r) in _KEYS.items()},
    paper="MaxViT (multi-axis block + grid attention)",
    # window 4 (so a 64 px input pads every stage's partitions but the first), 32-wide heads
    tiny=lambda cfg: dict(widths=(32, 32, 64, 64), depths=(1, 1, 1, 1), stem_width=16, window=4),
    aliases={"embed_dims": "widths"},
)
