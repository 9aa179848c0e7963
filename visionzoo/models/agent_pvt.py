"""Agent-PVT (Han et al., *Agent Attention: On the Integration of Softmax and Linear Attention*, ECCV 2024;
``LeapLabTHU/Agent-Attention``): ``agent_pvt_tiny`` / ``small`` / ``medium`` / ``large``, ``agent_pvt_medium_256``.

Layout (official ``agent_transformer/models/agent_pvt.py`` with ``cfgs/agent_pvt_*.yaml``): PVT v1. Stage 1
opens with a 4x4 s4 patch conv + LayerNorm, stages 2-4 with a 2x2 s2 patch conv + LayerNorm (eps 1e-5;
odd maps are zero-padded here, the official conv drops the last row / column), then each stage adds its
absolute position embedding ``pos_embed`` ``[1, h*w, C]`` and dropout. Blocks are pre-norm (LayerNorm eps
1e-6) agent attention (:class:`~visionzoo.blocks.agent_attn.AgentAttn`, global over the stage map,
``agent_num`` 9 / 16 / 49 / 49 agents) + MLP (ratios 8, 8, 4, 4). Every released config is ``attn_type
'AAAA'`` with ``agent_sr_ratios '1111'``: agent layers use no spatial reduction (the ``sr_ratios`` argument
only reaches the plain 'B' attention, which no released model has). No final norm: the head averages the
stage-4 tokens.

``img_size`` fixes the build-time stage maps (``img_size // 4 // 2**i``), which size the position
embeddings and the agent biases. Any input size runs: both are interpolated to the map seen at run time
(the position embedding bilinearly as the official ``_get_pos_embed``, the agent biases as in
:class:`~visionzoo.blocks.agent_attn.AgentAttn`); the official model runs only maps of ``img_size``'s size.
A checkpoint trained at another ``img_size`` (224 -> ``agent_pvt_medium_256``) loads by resizing them as the
official fine-tuning does (:func:`~visionzoo.models._pvt_swin_convert.fit_resolution`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


from .. import convert
from ._base import pretrained_cfg
from ._hierarchical import BlockCfg, HierarchicalCfg, HierarchicalNet, MixerCfg, StageCfg, StemCfg, per_stage
from ._registry import register_family
from ._pvt_swin_convert import PVT_POS_RULE, PVT_RULES, official_filter
from .agent_swin import ORIGIN, PAPER, official_img_size

__all__ = ["AgentPVTCfg", "VARIANTS", "checkpoint_filter_fn"]


@dataclass(frozen=True)
class AgentPVTCfg:
    depths: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 320, 512)  # official embed_dims
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    mlp_ratios: tuple[float, ...] = (8, 8, 4, 4)
    agent_num: tuple[int, ...] = (9, 16, 49, 49)  # agents per stage (a square)
    img_size: int = 224  # build-time input size: sizes the position embeddings and the agent biases
    patch_size: int = 4
    qkv_bias: bool = True
    norm_eps: float = 1e-6  # the blocks' LayerNorms (the patch embeds' are 1e-5)

    def __post_init__(self):
        per_stage(self, "depths", "widths", "num_heads", "mlp_ratios", "agent_num", heads="num_heads")
        if not isinstance(self.img_size, int) or self.img_size < self.patch_size * 2 ** (len(self.depths) - 1):
            raise ValueError(f"AgentPVTCfg: img_size must be an int of at least patch_size * 2**(stages - 1) "
                             f"({self.patch_size * 2 ** (len(self.depths) - 1)}), got {self.img_size!r}")
        self.arch()

    @property
    def maps(self) -> tuple[int, ...]:
        """Build-time side of each stage's (square) map: ``img_size // patch_size // 2**i``."""
        return tuple(self.img_size // self.patch_size // 2 ** i for i in range(len(self.depths)))

    def arch(self) -> HierarchicalCfg:
        stages = tuple(
            StageCfg(d, w, h, MixerCfg("agent", dict(map_size=(m, m), agent_num=int(n), qkv_bias=self.qkv_bias)),
                     BlockCfg(r, norm_eps=self.norm_eps), pos_embed=(m, m))
            for d, w, h, r, n, m in zip(self.depths, self.widths, self.num_heads, self.mlp_ratios, self.agent_num,
                                        self.maps))
        return HierarchicalCfg(stages, StemCfg("patch", self.patch_size), "patch_ln", final_norm="none")


# ---- checkpoint conversion ----------------------------------------------------------------------
checkpoint_filter_fn = official_filter(PVT_RULES + [PVT_POS_RULE], pos_embed_mode="bicubic")
checkpoint_filter_fn.__doc__ = """visionzoo or official (``PyramidVisionTransformer`` of ``agent_pvt.py``, bare or
``{"model": ...}``) keys -> visionzoo keys (``q`` / ``kv`` merged into ``qkv``); the agent biases and ``pos_embed``
of a checkpoint of another ``img_size`` resized as the official fine-tuning loader does (linear / bicubic)."""


def _official(kw: dict):
    """An official ``PyramidVisionTransformer(img_size=224, patch_size=16, in_chans=3, num_classes=1000,
    embed_dims, num_heads, mlp_ratios, qkv_bias=False, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
    drop_path_rate=0., norm_layer=nn.LayerNorm, depths, sr_ratios=[8, 4, 2, 1], agent_sr_ratios='1111',
    num_stages=4, agent_num=[9, 16, 49, 49], attn_type='AAAA')`` call of ``agent_pvt.py`` (the
    ``agent_pvt_*`` functions pass patch_size 4, qkv_bias True and LayerNorm eps 1e-6). ``qk_scale`` is
    accepted and, as in the official agent attention, unused; so is ``sr_ratios`` (agent layers use
    ``agent_sr_ratios``)."""
    kw = convert.check_official_kwargs("agent_pvt", kw, {
        "img_size", "patch_size", "in_chans", "num_classes", "embed_dims", "num_heads", "mlp_ratios", "qkv_bias",
        "qk_scale", "drop_rate", "attn_drop_rate", "drop_path_rate", "norm_layer", "depths", "sr_ratios",
        "agent_sr_ratios", "num_stages", "agent_num", "attn_type"})
    depths = tuple(kw.get("depths", (3, 4, 6, 3)))
    attn_type = kw.get("attn_type") or "AAAA"
    sr = str(kw.get("agent_sr_ratios", "1111"))
    if kw.get("num_stages", 4) != 4 or len(depths) != 4:
        raise NotImplementedError(f"from_official('agent_pvt'): only num_stages=4 with four depths is implemented, "
                                  f"got num_stages={kw.get('num_stages', 4)}, depths={depths}")
    if attn_type != "AAAA" or set(sr[:4]) != {"1"}:
        raise NotImplementedError(f"from_official('agent_pvt'): only attn_type='AAAA' with agent_sr_ratios='1111' "
                                  f"(every released model) is implemented, got attn_type={attn_type!r}, "
                                  f"agent_sr_ratios={kw.get('agent_sr_ratios')!r}")
    overrides = dict(depths=depths, widths=tuple(kw.get("embed_dims", (64, 128, 256, 512))),
                     num_heads=tuple(kw.get("num_heads", (1, 2, 4, 8))),
                     mlp_ratios=tuple(kw.get("mlp_ratios", (4, 4, 4, 4))),
                     agent_num=tuple(int(n) for n in kw.get("agent_num", (9, 16, 49, 49))),
                     img_size=official_img_size("agent_pvt", kw.get("img_size", 224)),
                     patch_size=int(kw.get("patch_size", 16)), qkv_bias=bool(kw.get("qkv_bias", False)),
                     norm_eps=convert.official_layernorm_eps("agent_pvt", kw.get("norm_layer")))
    model_kwargs = dict(num_classes=kw.get("num_classes", 1000), in_chans=kw.get("in_chans", 3),
                        drop_path_rate=kw.get("drop_path_rate", 0.0), proj_drop_rate=kw.get("drop_rate", 0.0),
                        attn_drop_rate=kw.get("attn_drop_rate", 0.0))
    return "agent_pvt_tiny", overrides, model_kwargs


# ---- variants -----------------------------------------------------------------------------------
_TINY = AgentPVTCfg()
_MEDIUM = dataclasses.replace(_TINY, depths=(3, 4, 18, 3))
VARIANTS = {
    "agent_pvt_tiny": _TINY,
    "agent_pvt_small": dataclasses.replace(_TINY, depths=(3, 4, 6, 3)),
    "agent_pvt_medium": _MEDIUM,
    "agent_pvt_large": dataclasses.replace(_TINY, depths=(3, 8, 27, 3)),
    "agent_pvt_medium_256": dataclasses.replace(_MEDIUM, img_size=256),
}
#: official top-1 of the released weights (ImageNet-1k)
_TOP1 = {"agent_pvt_tiny": 78.4, "agent_pvt_small": 82.2, "agent_pvt_medium": 83.4, "agent_pvt_large": 83.7,
         "agent_pvt_medium_256": 83.8}


def tiny(cfg: AgentPVTCfg) -> dict:
    """16..64 wide, one block per stage; same agents and build-time size."""
    return dict(depths=(1, 1, 1, 1), widths=(16, 32, 48, 64), num_heads=(1, 2, 3, 4))


register_family(
    __name__, "agent_pvt", HierarchicalNet, VARIANTS,
    {n: pretrained_cfg(paper=PAPER, origin_url=ORIGIN, first_conv="stem.proj", load="the official checkpoint",
                       size=cfg.img_size, license="unknown") for n, cfg in VARIANTS.items()},
    checkpoint_filter_fn,
    meta={n: dict(official_params_key=n, top1=_TOP1[n], top1_source="Agent-Attention README (ImageNet-1k)")
          for n in VARIANTS},
    official={"agent_pvt": _official}, paper="Agent-PVT (agent attention)", tiny=tiny,
)
