"""The CSWin skeleton (Dong et al., *CSWin Transformer*, CVPR 2022) on the shared hierarchical builder, for the
families that give some of its stages a global attention of their own (Agent-CSWin, FLatten-CSWin), and the
converter of the official ``CSWinTransformer`` checkpoints.

Layout (official ``agent_transformer/models/agent_cswin.py`` / ``models/flatten_cswin.py``): a 7x7 stride-4
conv (padding 2) + LayerNorm stem (STEMS ``'cswin'``: the input is zero-padded to a multiple of 4 first, so any
size gives ``ceil(n / 4)``; at multiples of 4 it is the official conv), ``Merge_Block`` (3x3 s2 conv + LayerNorm,
DOWNSAMPLES ``'overlap_ln'``) opening stages 2-4, final LayerNorm, mean, Linear; LayerNorm eps 1e-5 throughout.
Every block: pre-norm token mixer (``qkv`` -> attention -> ``proj``) and MLP residuals.

Stage types, one letter per stage (official ``attn_type``; ``letters`` = (global kind, stripe kind)):

* the family's global kind (Agent 'A', FLatten 'L'): its attention over the whole map. The official block runs
  it in windows of ``la_split_size``; every released configuration sets it to the build-time map (config
  ``CSWIN_LA_SPLIT_SIZE`` ``56-28-14-7`` at 224, ``96-48-24-12`` at 384), where the block turns global;
  smaller splits are not implemented (:class:`NotImplementedError`);
* the stripe kind (Agent 'B', FLatten 'S'): CSWin's cross-shaped stripes of ``split_size`` with LePE
  (:class:`~visionzoo.blocks.cswin_attn.CrossShapedWindowAttn`); global in the last stage and where the
  build-time map equals the split (the official ``last_stage`` rule);
* ``'M'`` + the count after the stage letters (``'AAMB2'``): that many global-kind blocks first, then stripes.

``img_size`` sizes the resolution-dependent parameters of the global kinds (agent biases, positional
encodings); any other input size runs (those are interpolated, stripes padded and masked).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import convert
from ._hierarchical import BlockCfg, HierarchicalCfg, MixerCfg, StageCfg, StemCfg, per_stage
from ._pvt_swin_convert import fit_resolution

__all__ = ["CSWinCfg", "CSWIN_RULES", "block_types", "checkpoint_filter_fn", "official_overrides"]


def block_types(attn_type: str, depths: tuple[int, ...], letters: str) -> tuple[tuple[str, ...], ...]:
    """Official ``attn_type`` -> one letter of ``letters`` (global, stripe) per block of every stage."""
    n = len(depths)
    head, tail = str(attn_type)[:n], str(attn_type)[n:]
    if len(head) != n or set(head) - set(letters + "M") or ("M" in head) != bool(tail) or \
            (tail and not tail.isdigit()):
        raise ValueError(f"attn_type must be one of {' / '.join(letters + 'M')} per stage ({n}), followed by the "
                         f"{letters[0]!r} block count of the 'M' stages when there are any, got {attn_type!r}")
    return tuple(tuple(t if t != "M" else (letters[0] if j < int(tail) else letters[1]) for j in range(d))
                 for t, d in zip(head, depths))


@dataclass(frozen=True)
class CSWinCfg:
    """The CSWin hyperparameters; a family subclass sets ``letters``, the ``attn_type`` default and
    :meth:`global_mixer`."""
    depths: tuple[int, ...] = (2, 4, 18, 1)
    embed_dim: int = 64  # stage 0 width; doubled by every Merge_Block
    num_heads: tuple[int, ...] = (2, 4, 8, 16)
    split_size: tuple[int, ...] = (1, 2, 7, 7)  # stripe width of the stripe kind per stage
    #: window of the global kind per stage (official la_split_size); None: the build-time maps (global)
    la_split_size: tuple[int, ...] | None = None
    attn_type: str = "BBBB"
    img_size: int = 224  # build-time input side: sizes the global kinds' resolution-dependent parameters
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None  # stripe attention only (the global kinds have no logit scale argument)

    letters: ClassVar[str] = "AB"

    def __post_init__(self):
        per_stage(self, "depths", "num_heads", "split_size", heads="num_heads")
        if self.la_split_size is not None:
            object.__setattr__(self, "la_split_size", tuple(int(s) for s in self.la_split_size))
            if len(self.la_split_size) != len(self.depths):
                raise ValueError(f"{type(self).__name__}: la_split_size {self.la_split_size} needs one entry per "
                                 f"stage ({len(self.depths)})")
        if not isinstance(self.img_size, int) or isinstance(self.img_size, bool) or self.img_size < 32:
            raise ValueError(f"{type(self).__name__}: img_size must be an int >= 32, got {self.img_size!r}")
        self.arch()

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))

    def maps(self) -> tuple[int, ...]:
        """Build-time map side per stage (official ``img_size // 4``, ``// 8``...)."""
        return tuple(self.img_size // 2 ** (i + 2) for i in range(len(self.depths)))

    def global_mixer(self, stage: int, side: int) -> MixerCfg:
        """The family's global attention for ``stage`` on a build-time ``side x side`` map."""
        raise NotImplementedError

    def arch(self) -> HierarchicalCfg:
        name, n = type(self).__name__, len(self.depths)
        try:
            types = block_types(self.attn_type, self.depths, self.letters)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        la = self.la_split_size or self.maps()
        stages = []
        for i, (d, w, h, m, sw) in enumerate(zip(self.depths, self.widths, self.num_heads, self.maps(),
                                                 self.split_size)):
            if m < 1:
                raise ValueError(f"{name}: img_size {self.img_size} leaves no map for stage {i}")
            last = i == n - 1
            if self.letters[0] in types[i] and not last and la[i] != m:
                raise NotImplementedError(f"{name}: stage {i}'s {self.letters[0]!r} attention in la_split_size "
                                          f"{la[i]} windows of its {m}x{m} map; only the window = the map (global, "
                                          "every released configuration) is implemented")
            global_stripes = last or sw == m
            if not global_stripes and self.letters[1] in types[i] and h % 2:
                raise ValueError(f"{name}: stage {i} has stripes, which need an even num_heads, got {h}")
            stripe = MixerCfg("cswin", dict(split_size=sw, global_attn=global_stripes, qkv_bias=self.qkv_bias,
                                            qk_scale=self.qk_scale))
            whole = self.global_mixer(i, m) if self.letters[0] in types[i] else None
            mixers = tuple(whole if t == self.letters[0] else stripe for t in types[i])
            stages.append(StageCfg(d, w, h, mixers[0] if len(set(types[i])) == 1 else mixers,
                                   BlockCfg(self.mlp_ratio)))
        return HierarchicalCfg(tuple(stages), StemCfg("cswin"), "overlap_ln")


# ---- official checkpoints -----------------------------------------------------------------------
def _block(m) -> str:
    return f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."


CSWIN_RULES = [
    (r"^stage1_conv_embed\.0\.", "stem.proj."),
    (r"^stage1_conv_embed\.2\.", "stem.norm."),
    (r"^merge(\d)\.conv\.", r"stages.\1.downsample.proj."),
    (r"^merge(\d)\.norm\.", r"stages.\1.downsample.norm."),
    (r"^stage(\d)\.(\d+)\.(qkv|proj)\.", lambda m: f"{_block(m)}attn.{m.group(3)}."),
    (r"^stage(\d)\.(\d+)\.attns\.(\d)\.get_v\.", lambda m: f"{_block(m)}attn.get_v{m.group(3)}."),
    (r"^stage(\d)\.(\d+)\.attns\.0\.", lambda m: f"{_block(m)}attn."),
    (r"^stage(\d)\.(\d+)\.", _block),
    (r"^head\.", "head.fc."),
]
_GET_V = re.compile(r"^(.*\.attn)\.get_v(\d)\.(weight|bias)$")


def _official(sd: dict, target: dict) -> dict:
    """Official keys -> visionzoo keys. The ``get_v`` convs (LePE; one per stripe branch) become the mixer's
    ``lepe`` (branches concatenated along channels) or, in agent blocks, ``dwc``."""
    out, lepe = {}, {}
    for k, v in convert.rename(sd, CSWIN_RULES).items():
        m = _GET_V.match(k)
        if m is None:
            out[k] = v
        else:
            lepe.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = v
    for (prefix, name), parts in lepe.items():
        key = f"{prefix}.lepe.{name}" if f"{prefix}.lepe.{name}" in target else f"{prefix}.dwc.{name}"
        out[key] = torch.cat([parts[i] for i in sorted(parts)]) if len(parts) > 1 else parts[0]
    return out


def checkpoint_filter_fn(state_dict, model):
    """visionzoo or official (``CSWinTransformer``, bare or ``{"model": ...}``) keys -> visionzoo keys; agent
    biases and positional encodings of a checkpoint of another ``img_size`` resized as the official fine-tuning
    loaders do (:func:`~visionzoo.models._pvt_swin_convert.fit_resolution`)."""
    target = model.state_dict()
    sd = convert.remap(state_dict, model, {"official": lambda s: _official(s, target)})
    return fit_resolution(sd, target)


def official_overrides(family: str, kw: dict, extra: set[str]) -> tuple[dict, dict, dict]:
    """The arguments every official ``CSWinTransformer(img_size=224, patch_size=16, in_chans=3, num_classes=1000,
    embed_dim=96, depth=[2, 2, 6, 2], split_size=[1, 2, 7, 7], la_split_size='1-2-7-7', num_heads=[2, 4, 8, 16],
    mlp_ratio=4., qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0., drop_path_rate=0.,
    hybrid_backbone=None, norm_layer=nn.LayerNorm, use_chk=False, ...)`` call shares -> (the checked arguments,
    cfg overrides, model kwargs); ``extra``: the family's own argument names, kept in the checked arguments.
    The stem is 4x4-strided whatever ``patch_size`` says (the official code ignores it). Only ``drop_rate=0`` (every
    released configuration) is implemented: the official block never applies its ``proj_drop`` and has no dropout
    after the stem, where visionzoo's ``proj_drop_rate`` drops."""
    kw = convert.check_official_kwargs(family, kw, {
        "img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "split_size", "la_split_size",
        "num_heads", "mlp_ratio", "qkv_bias", "qk_scale", "drop_rate", "attn_drop_rate", "drop_path_rate",
        "hybrid_backbone", "norm_layer", "use_chk", "attn_type"} | extra,
        supported=dict(hybrid_backbone=None, drop_rate=0.0), layernorm_eps=1e-5)
    la = str(kw.get("la_split_size", "1-2-7-7")).split("-")
    overrides = dict(depths=tuple(kw.get("depth", (2, 2, 6, 2))), embed_dim=int(kw.get("embed_dim", 96)),
                     num_heads=tuple(kw.get("num_heads", (2, 4, 8, 16))),
                     split_size=tuple(kw.get("split_size", (1, 2, 7, 7))), la_split_size=tuple(int(s) for s in la),
                     img_size=int(kw.get("img_size", 224)), mlp_ratio=float(kw.get("mlp_ratio", 4.0)),
                     qkv_bias=bool(kw.get("qkv_bias", True)), qk_scale=kw.get("qk_scale"))
    model_kwargs = dict(num_classes=kw.get("num_classes", 1000), in_chans=kw.get("in_chans", 3),
                        drop_path_rate=kw.get("drop_path_rate", 0.0), attn_drop_rate=kw.get("attn_drop_rate", 0.0))
    return kw, overrides, model_kwargs
