"""FLatten-Swin (Han et al., *FLatten Transformer*, ICCV 2023; ``LeapLabTHU/FLatten-Transformer``):
``flatten_swin_tiny`` / ``small`` / ``base`` and ``flatten_swin_base_384``.

Layout (official ``models/flatten_swin.py``, Swin with ``attn_type='LLSS'``): 4x4 s4 patch conv + LayerNorm;
'L' stages (1-2) are focused linear attention over the whole map
(:class:`~visionzoo.blocks.focused_linear_attn.FocusedLinearAttn`; the official window, 56 or 96, is
clamped to the stage map, so the "window" is the map: one global attention with a ``positional_encoding``
sized by the map of ``img_size``); 'S' stages (3-4) are Swin W-MSA
(:class:`~visionzoo.blocks.window_attn.SwinWindowAttn`) with window ``7`` (``12`` for the 384 model: the
official rule ``7 if window_size <= 56 else 12``), shifted by half a window on odd blocks except where the
map is no larger than the window. PatchMerging (timm's) opens stages 2-4 (the official layer closes
stages 1-3), LayerNorm eps 1e-5 throughout, final LayerNorm, mean, Linear. ``attn_type`` also takes the
official ``'M<k>'`` stages (the first ``k`` blocks 'L', the rest 'S'), e.g. ``'LLMS3'``.

``img_size`` (224; 384 for ``_384``) fixes the build-time maps (the 'L' stages' ``positional_encoding``).
Any other input size runs: the patch embed and PatchMerging zero-pad, ``positional_encoding`` is
bilinearly interpolated to the runtime map and Swin windows are padded with masked keys (the official
model asserts its ``img_size``). Loading a checkpoint of another ``img_size`` or window (e.g. the 224
one into the 384 model, the official fine-tuning start) resizes ``positional_encoding`` and the bias
tables bicubically, as the official fine-tuning loader (``utils.load_pretrained``) does.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import convert
from ._hierarchical import BlockCfg, HierarchicalCfg, MixerCfg, StageCfg, StemCfg, per_stage
from ._pvt_swin_convert import SWIN_RULES, official_filter
from .flatten_pvt import check_img_size, focused_mixer, register_flatten

__all__ = ["FLattenSwinCfg", "VARIANTS", "checkpoint_filter_fn"]


def _stage_types(attn_type: str, depths: tuple[int, ...]) -> tuple[tuple[str, ...], ...]:
    """Official ``attn_type`` -> 'L' / 'S' per block of every stage ('M' stages: ``attn_type[n:]`` 'L' blocks
    first, then 'S')."""
    n = len(depths)
    head, tail = attn_type[:n], attn_type[n:]
    if len(head) != n or set(head) - set("LSM") or ("M" in head) != bool(tail) or (tail and not tail.isdigit()):
        raise ValueError(f"FLattenSwinCfg: attn_type must be one of L / S / M per stage ({n}), followed by the 'L' "
                         f"block count of the 'M' stages when there are any (e.g. 'LLMS3'), got {attn_type!r}")
    return tuple(tuple(t if t != "M" else ("L" if j < int(tail) else "S") for j in range(d))
                 for t, d in zip(head, depths))


@dataclass(frozen=True)
class FLattenSwinCfg:
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    embed_dim: int = 96  # stage 0 width; doubled by every PatchMerging
    attn_type: str = "LLSS"  # per stage: 'L' focused linear (global), 'S' Swin windows, 'M' both (see above)
    window_size: int = 7  # the 'S' window (official: 7 if window_size <= 56 else 12)
    mlp_ratio: float = 4.0
    focusing_factor: int = 3
    kernel_size: int = 5  # the depthwise conv on V
    qkv_bias: bool = True
    qk_scale: float | None = None  # 'S' blocks only (the focused linear attention has no logit scale)
    patch_size: int = 4
    patch_norm: bool = True
    img_size: int = 224  # build-time input side: sizes the 'L' stages' positional_encoding

    def __post_init__(self):
        per_stage(self, "depths", "num_heads")
        check_img_size(self)
        self.arch()

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))

    def maps(self) -> tuple[int, ...]:
        """Build-time map side per stage (official ``patches_resolution // 2 ** i``)."""
        return tuple((self.img_size // self.patch_size) // 2 ** i for i in range(len(self.depths)))

    def arch(self) -> HierarchicalCfg:
        types = _stage_types(self.attn_type, self.depths)
        stages = []
        for i, (d, w, h, m) in enumerate(zip(self.depths, self.widths, self.num_heads, self.maps())):
            if m < 1:
                raise ValueError(f"FLattenSwinCfg: img_size {self.img_size} leaves no map for stage {i}")
            linear = focused_mixer(m, self.focusing_factor, self.kernel_size, 1, self.qkv_bias)
            # the official block clamps the window to a smaller map (and then never shifts)
            window = MixerCfg("swin", dict(window_size=min(self.window_size, m), qkv_bias=self.qkv_bias,
                                           qk_scale=self.qk_scale), cycle=dict(shift=(False, True)))
            mixers = tuple(linear if t == "L" else window for t in types[i])
            stages.append(StageCfg(d, w, h, mixers[0] if len(set(types[i])) == 1 else mixers,
                                   BlockCfg(self.mlp_ratio)))
        nwd = ("*.relative_position_bias_table",) if any("S" in t for t in types) else ()
        return HierarchicalCfg(tuple(stages), StemCfg("patch", self.patch_size, self.patch_norm), "merge",
                               no_weight_decay=nwd)


checkpoint_filter_fn = official_filter(SWIN_RULES)
checkpoint_filter_fn.__doc__ = """visionzoo or official (``FLattenSwinTransformer``, bare or ``{"model": ...}``) keys ->
visionzoo keys; ``relative_position_index`` / ``attn_mask`` buffers dropped, ``positional_encoding`` and bias
tables of another ``img_size`` / window resized."""


def _official(kw: dict):
    """An official ``FLattenSwinTransformer(img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96,
    depths, num_heads, window_size=7, mlp_ratio=4., qkv_bias=True, qk_scale=None, drop_rate=0.,
    attn_drop_rate=0., drop_path_rate=0.1, norm_layer=nn.LayerNorm, ape=False, patch_norm=True,
    use_checkpoint=False, focusing_factor=3, kernel_size=5, attn_type='LLLL')`` call (the configs pass
    ``window_size`` 56 or 96 and ``attn_type='LLSS'``). Its 'L' blocks use windows of ``window_size`` clamped to
    the stage map; only the clamped (global) case is implemented."""
    kw = convert.check_official_kwargs("flatten_swin", kw, {
        "img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depths", "num_heads", "window_size",
        "mlp_ratio", "qkv_bias", "qk_scale", "drop_rate", "attn_drop_rate", "drop_path_rate", "norm_layer", "ape",
        "patch_norm", "use_checkpoint", "focusing_factor", "kernel_size", "attn_type"},
        supported=dict(ape=False), layernorm_eps=1e-5)
    official_window = int(kw.get("window_size", 7))
    overrides = dict(depths=tuple(kw.get("depths", (2, 2, 6, 2))), num_heads=tuple(kw.get("num_heads", (3, 6, 12, 24))),
                     embed_dim=int(kw.get("embed_dim", 96)), attn_type=kw.get("attn_type") or "LLLL",
                     window_size=7 if official_window <= 56 else 12, mlp_ratio=float(kw.get("mlp_ratio", 4.0)),
                     focusing_factor=kw.get("focusing_factor", 3), kernel_size=kw.get("kernel_size", 5),
                     qkv_bias=bool(kw.get("qkv_bias", True)), qk_scale=kw.get("qk_scale"),
                     patch_size=int(kw.get("patch_size", 4)), patch_norm=bool(kw.get("patch_norm", True)),
                     img_size=int(kw.get("img_size", 224)))
    cfg = dataclasses.replace(FLattenSwinCfg(), **overrides)
    for i, (types, m) in enumerate(zip(_stage_types(cfg.attn_type, cfg.depths), cfg.maps())):
        if "L" in types and official_window < m:
            raise NotImplementedError(f"from_official('flatten_swin'): stage {i}'s focused linear attention would "
                                      f"run in {official_window}x{official_window} windows of its {m}x{m} map; only "
                                      f"window_size >= the map (global, every released configuration) is implemented")
    model_kwargs = dict(num_classes=kw.get("num_classes", 1000), in_chans=kw.get("in_chans", 3),
                        drop_path_rate=kw.get("drop_path_rate", 0.1), proj_drop_rate=kw.get("drop_rate", 0.0),
                        attn_drop_rate=kw.get("attn_drop_rate", 0.0))
    return "flatten_swin_tiny", overrides, model_kwargs


# ---- variants -----------------------------------------------------------------------------------
_TINY = FLattenSwinCfg()
_BASE = FLattenSwinCfg(depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), embed_dim=128)
VARIANTS = {
    "flatten_swin_tiny": _TINY,
    "flatten_swin_small": dataclasses.replace(_TINY, depths=(2, 2, 18, 2)),
    "flatten_swin_base": _BASE,
    "flatten_swin_base_384": dataclasses.replace(_BASE, img_size=384, window_size=12),
}
#: official top-1 (ImageNet-1k) of the released weights
_TOP1 = {"flatten_swin_tiny": 82.1, "flatten_swin_small": 83.5, "flatten_swin_base": 83.8,
         "flatten_swin_base_384": 85.0}


def tiny(cfg: FLattenSwinCfg) -> dict:
    """16..128 wide, one block per stage, head dim 16; keeps the variant's attn_type, window and img_size
    (two blocks in stage 3 so a shifted block exists)."""
    return dict(depths=(1, 1, 2, 1), embed_dim=16, num_heads=(1, 2, 4, 8))


register_flatten(__name__, "flatten_swin", VARIANTS, checkpoint_filter_fn, _official,
                 "FLatten-Swin (focused linear attention + Swin windows)", _TOP1, sizes={"flatten_swin_base_384": 384},
                 tiny=tiny)
