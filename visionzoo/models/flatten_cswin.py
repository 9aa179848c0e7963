"""FLatten-CSWin (Han et al., *FLatten Transformer*, ICCV 2023; ``LeapLabTHU/FLatten-Transformer``):
``flatten_cswin_tiny`` / ``small`` / ``base`` and ``flatten_cswin_base_384``.

The CSWin skeleton of :mod:`visionzoo.models._cswin` with ``attn_type='LLSS'`` (official
``models/flatten_cswin.py`` with ``cfgs/flatten_cswin_*.yaml``): 'L' stages (1-2) are focused linear attention
over the whole map plus LePE (:class:`~visionzoo.blocks.cswin_attn.FocusedLinearAttnLePE`: the shared
``kernel_size`` depthwise conv on v per head, learnable ``scale``, ``positional_encoding`` sized by the build-time
map, and the official ``get_v`` 3x3 LePE conv), 'S' stages CSWin's cross-shaped stripes of ``split_size`` with
LePE (stage 3: 7, 12 for the 384 model; stage 4 global). Any input size runs (positional encodings interpolated,
stripes padded and masked); a 224 checkpoint loads into the 384 model with its positional encodings resized
bicubically as the official fine-tuning loader does.

Official names (``official_params_key`` in the registry metadata): ``FLatten_CSWin_64_24181_tiny_224``,
``FLatten_CSWin_64_24322_small_224`` (depths 2-4-32-2, unlike Agent-CSWin-S), ``FLatten_CSWin_96_36292_base_224``,
``FLatten_CSWin_96_36292_base_384``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from ._cswin import CSWinCfg, checkpoint_filter_fn, official_overrides
from ._hierarchical import MixerCfg
from .flatten_pvt import register_flatten

__all__ = ["FLattenCSWinCfg", "VARIANTS", "checkpoint_filter_fn"]


@dataclass(frozen=True)
class FLattenCSWinCfg(CSWinCfg):
    attn_type: str = "LLSS"  # per stage: 'L' focused linear (global), 'S' stripes, 'M' both (see _cswin)
    focusing_factor: int = 3
    kernel_size: int = 5  # the depthwise conv on V

    letters: ClassVar[str] = "LS"

    def global_mixer(self, stage: int, side: int) -> MixerCfg:
        return MixerCfg("focused_linear_lepe", dict(map_size=(side, side), focusing_factor=self.focusing_factor,
                                                    kernel_size=self.kernel_size, qkv_bias=self.qkv_bias))


def _official(kw: dict):
    """An official ``CSWinTransformer(..., focusing_factor=3, kernel_size=5, attn_type='LLLL')`` call
    (``models/build.py`` passes the yaml's ``LA.FOCUSING_FACTOR``, ``LA.KERNEL_SIZE``, ``LA.ATTN_TYPE`` and
    ``LA.CSWIN_LA_SPLIT_SIZE``)."""
    kw, overrides, model_kwargs = official_overrides("flatten_cswin", kw, {"focusing_factor", "kernel_size"})
    overrides.update(attn_type=kw.get("attn_type", "LLLL"), focusing_factor=kw.get("focusing_factor", 3),
                     kernel_size=kw.get("kernel_size", 5))
    return "flatten_cswin_tiny", overrides, model_kwargs


_BASE = FLattenCSWinCfg(depths=(3, 6, 29, 2), embed_dim=96, num_heads=(4, 8, 16, 32))
VARIANTS = {
    "flatten_cswin_tiny": FLattenCSWinCfg(),
    "flatten_cswin_small": FLattenCSWinCfg(depths=(2, 4, 32, 2)),
    "flatten_cswin_base": _BASE,
    "flatten_cswin_base_384": dataclasses.replace(_BASE, split_size=(1, 2, 12, 12), img_size=384),
}
OFFICIAL_NAMES = {"flatten_cswin_tiny": "FLatten_CSWin_64_24181_tiny_224",
                  "flatten_cswin_small": "FLatten_CSWin_64_24322_small_224",
                  "flatten_cswin_base": "FLatten_CSWin_96_36292_base_224",
                  "flatten_cswin_base_384": "FLatten_CSWin_96_36292_base_384"}
#: official top-1 (ImageNet-1k, README table); the other variants' accuracies are only plotted
_TOP1 = {"flatten_cswin_tiny": 83.1}


def tiny(cfg: FLattenCSWinCfg) -> dict:
    """16..128 wide, one block per stage (two in stage 3); same types, splits and build-time size."""
    return dict(depths=(1, 1, 2, 1), embed_dim=16, num_heads=(1, 2, 4, 8))


register_flatten(__name__, "flatten_cswin", VARIANTS, checkpoint_filter_fn, _official,
                 "FLatten-CSWin (focused linear attention + cross-shaped windows)", _TOP1,
                 sizes={"flatten_cswin_base_384": 384}, tiny=tiny, official_names=OFFICIAL_NAMES)
