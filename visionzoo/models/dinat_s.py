"""DiNAT_s (Hassani & Shi, 2022, ``classification/dinats.py``): DiNAT in the Swin layout.

A 4x4 stride-4 patch-embed conv + LayerNorm (input zero-padded right/bottom to a multiple of 4),
stages of pre-norm NA / DiNA layers with RPB (MLP ratio 4, no layer scale), Swin PatchMerging
(LayerNorm(4C) -> Linear 4C -> 2C without bias, odd maps zero-padded) between stages, final
LayerNorm, mean, Linear. A :class:`~visionzoo.models.nat.NATCfg` with a patch stem and
``downsample='merge'``, built by :class:`~visionzoo.models._hierarchical.HierarchicalNet`; dilation
handling and the stage taps are described in :mod:`.nat`.
"""
from __future__ import annotations

import dataclasses

from .. import convert
from ._hierarchical import HierarchicalNet, StemCfg
from ._registry import register_family
from .nat import (DINAT_PAPER, NATCfg, checkpoint_filter_fn, nat_pretrained_cfg, official_model_kwargs, tiny)

__all__ = ["VARIANTS"]


def _official(kw: dict):
    """``DiNAT_s(patch_size=4, in_chans=3, num_classes=1000, embed_dim=96, depths=[2, 2, 6, 2],
    num_heads=[3, 6, 12, 24], kernel_size=7, dilations=None, mlp_ratio=4., qkv_bias=True, qk_scale=None,
    drop_rate=0., attn_drop_rate=0., drop_path_rate=0.2, norm_layer=nn.LayerNorm, patch_norm=True)``."""
    kw = convert.check_official_kwargs("dinat_s", kw, {"patch_size", "in_chans", "num_classes", "embed_dim", "depths",
                                               "num_heads", "kernel_size", "dilations", "mlp_ratio", "qkv_bias",
                                               "qk_scale", "drop_rate", "attn_drop_rate", "drop_path_rate",
                                               "norm_layer", "patch_norm"}, layernorm_eps=1e-5)
    dil = kw.get("dilations")
    overrides = dict(stem=StemCfg("patch", int(kw.get("patch_size", 4)), bool(kw.get("patch_norm", True))),
                     embed_dim=int(kw.get("embed_dim", 96)),
                     depths=tuple(kw.get("depths", (2, 2, 6, 2))), num_heads=tuple(kw.get("num_heads", (3, 6, 12, 24))),
                     kernel_size=int(kw.get("kernel_size", 7)), mlp_ratio=float(kw.get("mlp_ratio", 4.0)),
                     dilations=None if dil is None else tuple(tuple(d) for d in dil),
                     qkv_bias=bool(kw.get("qkv_bias", True)), qk_scale=kw.get("qk_scale"))
    return "dinat_s_tiny", overrides, official_model_kwargs(kw, 0.2)


_DIL_224 = ((1, 8), (1, 4), (1, 2), (1,))
_TINY = NATCfg(depths=(2, 2, 6, 2), embed_dim=96, num_heads=(3, 6, 12, 24), mlp_ratio=4.0, dilations=_DIL_224,
               stem=StemCfg("patch", 4), downsample="merge")


def _v(**kw) -> NATCfg:
    return dataclasses.replace(_TINY, **{"depths": (2, 2, 18, 2), **kw})


VARIANTS = {
    "dinat_s_tiny": _TINY,
    "dinat_s_small": _v(),
    "dinat_s_base": _v(embed_dim=128, num_heads=(4, 8, 16, 32)),
    "dinat_s_large": _v(embed_dim=192, num_heads=(6, 12, 24, 48)),
    "dinat_s_large_384": _v(embed_dim=192, num_heads=(6, 12, 24, 48), dilations=((1, 13), (1, 6), (1, 3), (1,))),
}

_FACTS = {
    "dinat_s_tiny": (81.8, "DiNAT README (ImageNet-1k, 224)"),
    "dinat_s_small": (83.5, "DiNAT README (ImageNet-1k, 224)"),
    "dinat_s_base": (83.8, "DiNAT README (ImageNet-1k, 224)"),
    "dinat_s_large": (86.5, "DiNAT README (ImageNet-22k -> 1k, 224)"),
    "dinat_s_large_384": (87.4, "DiNAT README (ImageNet-22k -> 1k, 384)"),
}

register_family(
    __name__, "dinat_s", HierarchicalNet, VARIANTS,
    {n: nat_pretrained_cfg(DINAT_PAPER, "stem.proj", 384 if n.endswith("_384") else 224) for n in VARIANTS},
    checkpoint_filter_fn,
    meta={n: dict(official_params_key=n, top1=f[0], top1_source=f[1]) for n, f in _FACTS.items()},
    official={"dinat_s": _official},
    paper="DiNAT_s (dilated neighborhood attention, Swin layout)", tiny=tiny,
)
