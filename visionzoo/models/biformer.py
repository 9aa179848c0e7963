"""BiFormer (Zhu et al., *BiFormer: Vision Transformer with Bi-Level Routing Attention*, CVPR 2023;
``rayleizhu/BiFormer``): tiny/small/base and the Swin-layout ablation ``biformer_stl``.

Layout (``biformer``): stem = 3x3 s2 conv (C/2, bias) -> BN -> GELU -> 3x3 s2 conv -> BN; stage
downsample = 3x3 s2 conv -> BN. Layout (``stl``): stem = 4x4 s4 conv -> BN; downsample = BN ->
2x2 s2 conv. Blocks: ``x + DWConv3x3(x)`` (``biformer`` only), then pre-norm (LayerNorm eps 1e-6)
attention and MLP residuals; stages 1-3 use bi-level routing attention
(:class:`~visionzoo.blocks.routing_attn.BiLevelRoutingAttn`, n_win 7, topk 1/4/16), the last stage
global attention with 8 heads and LePE on its input. Final BatchNorm, global average pool, Linear.

Any input size: ``bra`` pads every map to whole regions (7 per side) and masks the padding out of
the routing and the attention (the official code asserts H, W divisible by 7 per stage, or pads
unmasked with ``auto_pad``). The trunk is channels-last. Official checkpoints (``{"model": sd}``
or bare) convert through :func:`checkpoint_filter_fn`; ``from_official("biformer", kwargs)``
builds the model of an official ``BiFormer(...)`` call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, register_notrace_module, trunc_normal_

from .. import convert
from ..blocks.routing_attn import BiLevelRoutingAttn, GlobalAttnLePE
from ..blocks.transformer_block import TransformerBlock
from ._base import Backbone, Stage
from ._registry import register_family

__all__ = ["BiFormerCfg", "BiFormer", "VARIANTS", "checkpoint_filter_fn"]


@dataclass(frozen=True)
class BiFormerCfg:
    depths: tuple[int, ...] = (2, 2, 8, 2)
    embed_dims: tuple[int, ...] = (64, 128, 256, 512)
    qk_dims: tuple[int, ...] | None = None  # default: embed_dims
    mlp_ratios: tuple[float, ...] = (3, 3, 3, 3)
    #: routed regions per stage; -2: global attention with LePE (the official code's value)
    topks: tuple[int, ...] = (1, 4, 16, -2)
    head_dim: int = 32  # BRA heads = qk_dim // head_dim
    n_win: int = 7
    side_dwconv: int = 5  # LePE kernel
    before_attn_dwconv: int = 3  # conditional position embedding kernel (0: none)
    layer_scale: float | None = None
    qk_scale: float | None = None
    layout: str = "biformer"  # 'biformer' | 'stl'
    global_heads: int = 8  # last-stage attention heads (hard-coded 8 in the official AttentionLePE)

    def __post_init__(self):
        n = len(self.depths)
        for name in ("embed_dims", "mlp_ratios", "topks") + (("qk_dims",) if self.qk_dims else ()):
            if len(getattr(self, name)) != n:
                raise ValueError(f"BiFormerCfg.{name} needs one entry per stage ({n}), got {getattr(self, name)}")
        if self.layout not in ("biformer", "stl"):
            raise ValueError(f"BiFormerCfg.layout must be 'biformer' or 'stl', got {self.layout!r}")
        if any(t == 0 or t < -2 or t == -1 for t in self.topks):
            raise ValueError(f"BiFormerCfg.topks: each must be >= 1 (routing) or -2 (global attention), "
                             f"got {self.topks}")


@register_notrace_module  # BatchNorm2d's batch-size check is Python control flow on the shape
class BatchNormNhwc(nn.BatchNorm2d):
    """BatchNorm2d on a channels-last ``[B, H, W, C]`` map (same parameters and keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad an NCHW map at the bottom/right to a multiple of ``multiple`` (patch convs without
    padding would drop the remainder)."""
    ph, pw = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


@register_notrace_module  # a leaf for timm's FX feature extraction: the padding is shape-dependent Python
class NhwcSequential(nn.Sequential):
    """``nn.Sequential`` of NCHW layers run on a ``[B, H, W, C]`` map (free views around it), the map
    first zero-padded to a multiple of ``pad_multiple`` (the STL layout's 2x2 patch conv)."""

    def __init__(self, *modules: nn.Module, pad_multiple: int = 1):
        super().__init__(*modules)
        self.pad_multiple = pad_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_pad_to(x.permute(0, 3, 1, 2), self.pad_multiple)).permute(0, 2, 3, 1)


@register_notrace_module
class Stem(NhwcSequential):
    """NCHW image -> channels-last ``[B, H/4, W/4, C]`` (runs on a channels-last copy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_to(x.contiguous(memory_format=torch.channels_last), self.pad_multiple)
        return nn.Sequential.forward(self, x).permute(0, 2, 3, 1)


class BiFormerBlock(TransformerBlock):
    """``x + DWConv(x)`` (conditional position embedding, ``pos_embed``), then the pre-norm block."""

    def __init__(self, dim: int, attn: nn.Module, pos_kernel: int, **kwargs):
        super().__init__(dim, attn, **kwargs)
        dd = dict(device=kwargs.get("device"), dtype=kwargs.get("dtype"))
        self.pos_embed = nn.Conv2d(dim, dim, pos_kernel, padding=pos_kernel // 2, groups=dim, **dd) \
            if pos_kernel else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:
            x = x + self.pos_embed(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return super().forward(x)


class BiFormer(Backbone):
    """BiFormer over :class:`BiFormerCfg` (see the module docstring)."""

    channels_last_stages = True

    def __init__(self, cfg: BiFormerCfg, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, backend: str | None = None,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.cfg = cfg
        dims = cfg.embed_dims
        if cfg.layout == "biformer":
            self.stem = Stem(nn.Conv2d(in_chans, dims[0] // 2, 3, 2, 1, **dd), nn.BatchNorm2d(dims[0] // 2, **dd),
                             nn.GELU(), nn.Conv2d(dims[0] // 2, dims[0], 3, 2, 1, **dd), nn.BatchNorm2d(dims[0], **dd))
        else:
            self.stem = Stem(nn.Conv2d(in_chans, dims[0], 4, 4, **dd), nn.BatchNorm2d(dims[0], **dd), pad_multiple=4)
        qk_dims = cfg.qk_dims or dims
        dpr = torch.linspace(0, drop_path_rate, sum(cfg.depths)).tolist()
        stages, reductions = [], []
        for i, (depth, dim, qk_dim, topk) in enumerate(zip(cfg.depths, dims, qk_dims, cfg.topks)):
            if i == 0:
                down = nn.Identity()
            elif cfg.layout == "biformer":
                down = NhwcSequential(nn.Conv2d(dims[i - 1], dim, 3, 2, 1, **dd), nn.BatchNorm2d(dim, **dd))
            else:
                down = NhwcSequential(nn.BatchNorm2d(dims[i - 1], **dd), nn.Conv2d(dims[i - 1], dim, 2, 2, **dd),
                                      pad_multiple=2)
            blocks = []
            for _ in range(depth):
                if topk > 0:
                    attn = BiLevelRoutingAttn(dim, qk_dim // cfg.head_dim, cfg.n_win, qk_dim, topk, cfg.side_dwconv,
                                              cfg.qk_scale, backend=backend, **dd)
                else:
                    attn = GlobalAttnLePE(dim, cfg.global_heads, side_dwconv=cfg.side_dwconv, **dd)
                blocks.append(BiFormerBlock(dim, attn, cfg.before_attn_dwconv if cfg.layout == "biformer" else 0,
                                            mlp_ratio=cfg.mlp_ratios[i], drop_path=dpr.pop(0),
                                            layer_scale=cfg.layer_scale,
                                            norm_layer=lambda d, **kw: nn.LayerNorm(d, eps=1e-6, **kw), **dd))
            stages.append(Stage(down, blocks))
            reductions.append(4 * 2 ** i)
        self.stages = nn.Sequential(*stages)
        self.norm = BatchNormNhwc(dims[-1], **dd)
        self.head = ClassifierHead(dims[-1], num_classes, global_pool, drop_rate, **dd)
        self._finish(in_chans, num_classes, dims, reductions, global_pool)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @staticmethod
    def num_stages(cfg: BiFormerCfg) -> int:
        return len(cfg.depths)


# ---- checkpoint conversion ----------------------------------------------------------------------
_RULES = [
    (r"^downsample_layers\.0\.", "stem."),
    (r"^downsample_layers\.(\d)\.", r"stages.\1.downsample."),
    (r"^stages\.(\d+)\.(?:blocks\.)?(\d+)\.", r"stages.\1.blocks.\2."),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.[23]\.", ".mlp.fc2."),
    (r"\.gamma1$", ".ls1.gamma"),
    (r"\.gamma2$", ".ls2.gamma"),
    (r"^head\.", "head.fc."),
]


def checkpoint_filter_fn(state_dict, model: BiFormer):
    """visionzoo or official (``biformer.py`` / ``biformer_stl.py``, optionally ``{"model": ...}``) keys."""
    return convert.remap(state_dict, model, {"official": lambda sd: convert.rename(sd, _RULES)})


def _official(kw: dict):
    """An official ``BiFormer(...)`` call (``models/biformer.py``) -> a visionzoo config."""
    kw = dict(kw)
    known = {"depth", "in_chans", "num_classes", "embed_dim", "head_dim", "qk_scale", "representation_size",
             "drop_path_rate", "drop_rate", "use_checkpoint_stages", "n_win", "kv_downsample_mode", "kv_per_wins",
             "topks", "side_dwconv", "layer_scale_init_value", "qk_dims", "param_routing", "diff_routing",
             "soft_routing", "pre_norm", "pe", "pe_stages", "before_attn_dwconv", "auto_pad",
             "kv_downsample_kernels", "kv_downsample_ratios", "mlp_ratios", "param_attention", "mlp_dwconv"}
    unknown = set(kw) - known
    if unknown:
        raise TypeError(f"from_official('biformer'): unsupported official arguments {sorted(unknown)}")
    unsupported = {k: kw.get(k) for k, ok in (
        ("kv_downsample_mode", "identity"), ("param_routing", False), ("diff_routing", False),
        ("soft_routing", False), ("pre_norm", True), ("pe", None), ("mlp_dwconv", False), ("param_attention", "qkvo"),
        ("representation_size", None)) if kw.get(k, ok) != ok}
    if any(t in (-1, 0) for t in kw.get("topks", ())):
        unsupported["topks"] = kw["topks"]
    if unsupported:
        raise NotImplementedError(f"from_official('biformer'): only the released configuration family is "
                                  f"implemented (identity kv, hard routing, pre-norm, qkvo); got {unsupported}")
    ls = kw.get("layer_scale_init_value", -1)
    overrides = dict(depths=tuple(kw["depth"]), embed_dims=tuple(kw["embed_dim"]),
                     qk_dims=tuple(kw["qk_dims"]) if kw.get("qk_dims") and None not in kw["qk_dims"] else None,
                     mlp_ratios=tuple(kw.get("mlp_ratios", (4, 4, 4, 4))), topks=tuple(kw["topks"]),
                     head_dim=kw.get("head_dim", 64), n_win=kw.get("n_win", 7), side_dwconv=kw.get("side_dwconv", 5),
                     before_attn_dwconv=kw.get("before_attn_dwconv", 3), layer_scale=ls if ls > 0 else None,
                     qk_scale=kw.get("qk_scale"))
    model_kwargs = {k: kw[k] for k in ("num_classes", "drop_path_rate", "drop_rate", "in_chans") if k in kw}
    return "biformer_tiny", overrides, model_kwargs


# ---- variants -----------------------------------------------------------------------------------
VARIANTS = {
    "biformer_tiny": BiFormerCfg(),
    "biformer_small": BiFormerCfg(depths=(4, 4, 18, 4)),
    "biformer_base": BiFormerCfg(depths=(4, 4, 18, 4), embed_dims=(96, 192, 384, 768)),
    "biformer_stl": BiFormerCfg(depths=(2, 2, 6, 2), embed_dims=(96, 192, 384, 768), mlp_ratios=(4, 4, 4, 4),
                                layout="stl"),
}
_TOP1 = {"biformer_tiny": 81.4, "biformer_small": 83.8, "biformer_base": 84.3, "biformer_stl": 82.7}


def _pretrained_cfg(name: str) -> dict:
    return dict(num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, interpolation="bicubic",
                mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="stem.0", classifier="head.fc",
                license="mit", paper_name="BiFormer: Vision Transformer with Bi-Level Routing Attention",
                paper_ids="arXiv:2303.08810", origin_url="https://github.com/rayleizhu/BiFormer",
                notes=("Weights are not hosted by visionzoo; official checkpoints load with "
                       "create_model(name, checkpoint_path=...).",))


register_family(
    __name__, "biformer", BiFormer, VARIANTS, {n: _pretrained_cfg(n) for n in VARIANTS}, checkpoint_filter_fn,
    meta={n: dict(official_params_key=n, top1=t, top1_source="BiFormer README (ImageNet-1k, 224)")
          for n, t in _TOP1.items()},
    official={"biformer": _official}, paper="BiFormer (bi-level routing attention)",
)
