"""Isotropic NAT / DiNAT and ViT-RPB (Hassani & Shi, 2022, ``classification/isotropic.py``).

A 16x16 stride-16 patch-embed conv + LayerNorm (input zero-padded to a multiple of 16), 12
pre-norm layers at constant width: neighborhood attention (kernel 7; DiNAT alternates dilation
1 and 2, starting with 1) or, for ViT-RPB, global attention with a ``[heads, 27, 27]`` relative
position bias (:class:`~visionzoo.blocks.GlobalRelPosAttn2d`; exact on maps up to 14x14,
bicubically resized beyond). Final LayerNorm, mean, Linear. No class token, no absolute
position embedding.

The 12 layers are grouped into 4 "stages" of 3 (no downsampling between them), so the contract's
feature taps are layers 3, 6, 9 and 12, all at stride 16; the official flat ``layers.{j}`` keys
map onto ``stages.{j // 3}.blocks.{j % 3}``. A :class:`~visionzoo.models.nat.NATCfg` with a patch stem
and ``downsample='none'``, built by :class:`IsotropicNet` (the shared hierarchical model).

Detection backbones: ``create_model(name, features_only=True, feature_pyramid="simple")`` returns ViTDet's
simple feature pyramid instead (:mod:`~visionzoo.models._simple_pyramid`: strides 4, 8, 16, 32, all from the
last layer's map; ``out_indices`` then index those four levels).
"""
from __future__ import annotations

import dataclasses

from .. import convert
from ._hierarchical import HierarchicalNet, MixerCfg, StemCfg
from ._registry import register_family
from ._simple_pyramid import SimplePyramidMixin, pyramid_filter
from .nat import (DINAT_PAPER, NATCfg, checkpoint_filter_fn, nat_pretrained_cfg, official_model_kwargs, tiny)

__all__ = ["IsotropicNet", "VARIANTS", "isotropic_cfg"]


def _group(depth: int, groups: int = 4) -> tuple[int, ...]:
    n = min(groups, depth)
    return tuple(depth // n + (1 if i < depth % n else 0) for i in range(n))


def isotropic_cfg(embed_dim: int, num_heads: int, depth: int = 12, kernel_size: int | None = 7, dilation: int = 1,
                  table: int = 14, patch_size: int = 16, patch_norm: bool = True, **kw) -> NATCfg:
    """Isotropic config: ``kernel_size=None`` is ViT-RPB; otherwise layer ``i`` uses dilation 1 for even
    ``i`` and ``dilation`` for odd ``i``, as the official model."""
    depths = _group(depth)
    starts = [sum(depths[:s]) for s in range(len(depths))]
    dilations = tuple(tuple(1 if (a + j) % 2 == 0 else dilation for j in range(d)) for a, d in zip(starts, depths))
    fields = dict(depths=depths, num_heads=(num_heads,) * len(depths), embed_dim=embed_dim, mlp_ratio=4.0,
                  kernel_size=kernel_size or 7, dilations=dilations if kernel_size and dilation > 1 else None,
                  stem=StemCfg("patch", patch_size, patch_norm), downsample="none",
                  mixer=MixerCfg("na") if kernel_size else MixerCfg("global_rpb", dict(table_size=table)))
    return NATCfg(**{**fields, **kw})


class IsotropicNet(SimplePyramidMixin, HierarchicalNet):
    """:class:`HierarchicalNet` with an optional ViTDet simple pyramid over the last layer's map.

    Args:
        feature_pyramid: ``None`` (feature levels are the 4 layer groups, all at stride 16) or ``"simple"``
            (``feature_info`` and ``forward_intermediates`` give the pyramid's strides 4, 8, 16, 32; the
            classifier path is unchanged and does not use the pyramid; :class:`SimplePyramidMixin`).
    """

    def __init__(self, cfg, *args, feature_pyramid: str | None = None, **kwargs):
        super().__init__(cfg, *args, **kwargs)
        self._add_pyramid(feature_pyramid, device=kwargs.get("device"), dtype=kwargs.get("dtype"))


_filter_fn = pyramid_filter(checkpoint_filter_fn)


def _official(kw: dict):
    """``NATIsotropic(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=384, depth=12,
    num_heads=12, mlp_ratio=4., qkv_bias=True, qk_scale=None, kernel_size=7, dilation=2,
    layer=NATransformerLayer, drop_rate=0., attn_drop_rate=0., drop_path_rate=0.1, norm_layer=nn.LayerNorm,
    patch_norm=True)``; ``layer=VisionTransformerLayer`` (class or name) is ViT-RPB."""
    kw = convert.check_official_kwargs("nat_isotropic", kw, {
        "img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
        "qk_scale", "kernel_size", "dilation", "layer", "drop_rate", "attn_drop_rate", "drop_path_rate", "norm_layer",
        "patch_norm"}, layernorm_eps=1e-5)
    layer = getattr(kw.get("layer", "NATransformerLayer"), "__name__", kw.get("layer", "NATransformerLayer"))
    if layer not in ("NATransformerLayer", "VisionTransformerLayer"):
        raise ValueError(f"from_official('nat_isotropic'): layer must be NATransformerLayer or VisionTransformerLayer, "
                         f"got {layer!r}")
    vit = layer == "VisionTransformerLayer"
    patch = int(kw.get("patch_size", 16))
    img = kw.get("img_size", 224)
    img = img[0] if isinstance(img, (tuple, list)) else img
    cfg = isotropic_cfg(int(kw.get("embed_dim", 384)), int(kw.get("num_heads", 12)), int(kw.get("depth", 12)),
                        None if vit else int(kw.get("kernel_size", 7)), 1 if vit else int(kw.get("dilation", 2) or 1),
                        table=int(img) // patch, patch_size=patch, patch_norm=bool(kw.get("patch_norm", True)),
                        mlp_ratio=float(kw.get("mlp_ratio", 4.0)), qkv_bias=bool(kw.get("qkv_bias", True)),
                        qk_scale=kw.get("qk_scale"))
    overrides = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    return ("vitrpb_small" if vit else "nat_isotropic_small"), overrides, official_model_kwargs(kw, 0.1)


VARIANTS = {
    "nat_isotropic_small": isotropic_cfg(384, 12),
    "nat_isotropic_base": isotropic_cfg(768, 24),
    "dinat_isotropic_small": isotropic_cfg(384, 12, dilation=2),
    "dinat_isotropic_base": isotropic_cfg(768, 24, dilation=2),
    "vitrpb_small": isotropic_cfg(384, 12, kernel_size=None),
    "vitrpb_base": isotropic_cfg(768, 24, kernel_size=None),
}

_FACTS = {
    "nat_isotropic_small": 80.0, "nat_isotropic_base": 81.6, "dinat_isotropic_small": 80.8,
    "dinat_isotropic_base": 82.1, "vitrpb_small": 81.2, "vitrpb_base": 82.5,
}

register_family(
    __name__, "nat_isotropic", IsotropicNet, VARIANTS,
    {n: nat_pretrained_cfg(DINAT_PAPER, "stem.proj", reduction=16) for n in VARIANTS},
    _filter_fn,
    meta={n: dict(official_params_key=n, top1=t, top1_source="DiNAT README, isotropic models (ImageNet-1k, 224)")
          for n, t in _FACTS.items()},
    official={"nat_isotropic": _official},
    paper="Isotropic NAT / DiNAT and ViT with relative position bias", tiny=tiny,
)
