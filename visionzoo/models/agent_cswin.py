"""Agent-CSWin (Han et al., *Agent Attention*, ECCV 2024; ``LeapLabTHU/Agent-Attention``): ``agent_cswin_tiny`` /
``small`` / ``base`` and ``agent_cswin_base_384``.

The CSWin skeleton of :mod:`visionzoo.models._cswin` with ``attn_type='AABB'`` (official
``agent_transformer/models/agent_cswin.py`` with ``cfgs/agent_cswin_*.yaml``): 'A' stages (1-2) are agent
attention over the whole map (:class:`~visionzoo.blocks.agent_attn.AgentAttn`: ``agent_num`` agents, biases sized
by the build-time map; the official ``get_v`` LePE conv is its ``dwc``), 'B' stages CSWin's cross-shaped stripes
of ``split_size`` with LePE (stage 3: 7, 12 for the 384 model; stage 4 global). Any input size runs (agent biases
interpolated, stripes padded and masked); a 224 checkpoint loads into the 384 model with its agent biases
resized as the official fine-tuning loader does.

Official names (``official_params_key`` in the registry metadata): ``Agent_CSWin_64_24181_tiny_224``,
``Agent_CSWin_64_36292_small_224``, ``Agent_CSWin_96_36292_base_224``, ``Agent_CSWin_96_36292_base_384``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from ._base import pretrained_cfg
from ._cswin import CSWinCfg, checkpoint_filter_fn, official_overrides
from ._hierarchical import HierarchicalNet, MixerCfg, per_stage
from ._registry import register_family

__all__ = ["AgentCSWinCfg", "VARIANTS", "checkpoint_filter_fn"]


@dataclass(frozen=True)
class AgentCSWinCfg(CSWinCfg):
    attn_type: str = "AABB"  # per stage: 'A' agent attention (global), 'B' stripes, 'M' both (see _cswin)
    agent_num: tuple[int, ...] = (9, 16, 49, 49)  # agents per stage (a square); unused by 'B' stages

    letters: ClassVar[str] = "AB"

    def __post_init__(self):
        per_stage(self, "depths", "agent_num")
        super().__post_init__()

    def global_mixer(self, stage: int, side: int) -> MixerCfg:
        return MixerCfg("agent", dict(map_size=(side, side), agent_num=int(self.agent_num[stage]),
                                      qkv_bias=self.qkv_bias))


def _official(kw: dict):
    """An official ``CSWinTransformer(..., agent_num=49, attn_type='AAAA')`` call (``models/build.py`` passes the
    yaml's ``AGENT.NUM.split('-')``, ``AGENT.ATTN_TYPE`` and ``AGENT.CSWIN_LA_SPLIT_SIZE``)."""
    kw, overrides, model_kwargs = official_overrides("agent_cswin", kw, {"agent_num"})
    agent_num = kw.get("agent_num", 49)
    agent_num = (agent_num,) * len(overrides["depths"]) if isinstance(agent_num, (int, str)) else agent_num
    overrides.update(attn_type=kw.get("attn_type", "AAAA"),
                     agent_num=tuple(int(n) for n in agent_num)[:len(overrides["depths"])])
    return "agent_cswin_tiny", overrides, model_kwargs


_TINY = AgentCSWinCfg()
_SMALL = AgentCSWinCfg(depths=(3, 6, 29, 2))
_BASE = AgentCSWinCfg(depths=(3, 6, 29, 2), embed_dim=96, num_heads=(4, 8, 16, 32))
VARIANTS = {
    "agent_cswin_tiny": _TINY,
    "agent_cswin_small": _SMALL,
    "agent_cswin_base": _BASE,
    "agent_cswin_base_384": dataclasses.replace(_BASE, split_size=(1, 2, 12, 12), img_size=384),
}
OFFICIAL_NAMES = {"agent_cswin_tiny": "Agent_CSWin_64_24181_tiny_224",
                  "agent_cswin_small": "Agent_CSWin_64_36292_small_224",
                  "agent_cswin_base": "Agent_CSWin_96_36292_base_224",
                  "agent_cswin_base_384": "Agent_CSWin_96_36292_base_384"}
_TOP1 = {"agent_cswin_tiny": 83.1, "agent_cswin_small": 83.9, "agent_cswin_base": 84.7, "agent_cswin_base_384": 85.8}
PAPER = ("Agent Attention: On the Integration of Softmax and Linear Attention", "arXiv:2312.08874")
ORIGIN = "https://github.com/LeapLabTHU/Agent-Attention"


def tiny(cfg: AgentCSWinCfg) -> dict:
    """16..128 wide, one block per stage (two in stage 3); same types, agents, splits and build-time size."""
    return dict(depths=(1, 1, 2, 1), embed_dim=16, num_heads=(1, 2, 4, 8))


register_family(
    __name__, "agent_cswin", HierarchicalNet, VARIANTS,
    {n: pretrained_cfg(paper=PAPER, origin_url=ORIGIN, first_conv="stem.proj", load="the official checkpoint",
                       size=cfg.img_size, crop_pct=0.875 if cfg.img_size == 224 else 1.0, license="unknown")
     for n, cfg in VARIANTS.items()},
    checkpoint_filter_fn,
    meta={n: dict(official_params_key=OFFICIAL_NAMES[n], official_name=OFFICIAL_NAMES[n], top1=_TOP1[n],
                  top1_source="Agent-Attention README (ImageNet-1k)") for n in VARIANTS},
    official={"agent_cswin": _official}, paper="Agent-CSWin (agent attention + cross-shaped windows)", tiny=tiny,
)
