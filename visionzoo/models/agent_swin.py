"""Agent-Swin (Han et al., *Agent Attention: On the Integration of Softmax and Linear Attention*, ECCV 2024;
``LeapLabTHU/Agent-Attention``): ``agent_swin_tiny`` / ``small`` / ``base``, ``agent_swin_small_288``,
``agent_swin_base_384``.

Layout (official ``agent_transformer/models/agent_swin.py`` with ``cfgs/agent_swin_*.yaml``): Swin's 4x4
patch embed + LayerNorm, PatchMerging between stages (it opens the next stage here, timm layout, so stage
``i``'s output is the official ``layers.{i}.blocks.{last}`` tap), final LayerNorm, mean, Linear; LayerNorm
eps 1e-5 throughout. Each stage has a type (official ``attn_type``, one letter per stage):

* ``'A'``: agent attention (:class:`~visionzoo.blocks.agent_attn.AgentAttn`) over the whole stage map. The
  configs' ``WINDOW_SIZE`` is ``img_size / 4``, which the official block clamps to the map, so 'A' blocks
  have no windows and no shift; ``agent_num`` agents per stage (9, 16, 49, 49).
* ``'B'``: Swin W-MSA (:class:`~visionzoo.blocks.window_attn.SwinWindowAttn`) with window
  ``max(7, WINDOW_SIZE // 8)`` (7 at 224, 9 at 288, 12 at 384; the map where the map is not larger),
  shifted by half a window on odd blocks (not on maps no larger than the window).
* ``'M<k>'``: the first ``k`` blocks 'A', the others 'B' (shift parity counted from the stage's first block).

``img_size`` fixes the build-time stage maps, which size the resolution-dependent parameters (the
``ah/aw/ha/wa`` agent biases and the Swin windows). Any input size runs: the agent biases are interpolated
to the map seen at run time, Swin windows pad (see the blocks). The official model asserts the input equals
``img_size``. A checkpoint trained at another ``img_size`` loads by resizing those parameters as the official
fine-tuning does (:func:`~visionzoo.models._pvt_swin_convert.fit_resolution`).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass


from .. import convert
from ._base import pretrained_cfg
from ._pvt_swin_convert import SWIN_RULES, official_filter
from ._hierarchical import BlockCfg, HierarchicalCfg, HierarchicalNet, MixerCfg, StageCfg, StemCfg, per_stage
from ._registry import register_family

__all__ = ["AgentSwinCfg", "VARIANTS", "checkpoint_filter_fn"]

_STAGE_TYPE = re.compile(r"^(A|B|M(\d+))$")


@dataclass(frozen=True)
class AgentSwinCfg:
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    embed_dim: int = 96  # stage 0 width; doubled by every PatchMerging
    #: per stage: 'A' agent attention, 'B' Swin (shifted) windows, 'M<k>' k agent blocks then Swin blocks
    attn_type: tuple[str, ...] = ("A", "A", "A", "B")
    agent_num: tuple[int, ...] = (9, 16, 49, 49)  # agents per stage (a square); unused by 'B' stages
    img_size: int = 224  # build-time input size: sizes the agent biases and the Swin windows
    #: the official WINDOW_SIZE; None: img_size // patch_size (every released config). 'A' blocks need it to
    #: cover the stage map; 'B' blocks use max(7, window_size // 8)
    window_size: int | None = None
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None  # Swin blocks only (the official agent attention ignores it)
    patch_size: int = 4
    patch_norm: bool = True

    def __post_init__(self):
        per_stage(self, "depths", "num_heads", "attn_type", "agent_num", heads="num_heads")
        if not isinstance(self.img_size, int) or self.img_size < self.patch_size:
            raise ValueError(f"AgentSwinCfg: img_size must be an int >= patch_size ({self.patch_size}), got "
                             f"{self.img_size!r}")
        for i, (t, d) in enumerate(zip(self.attn_type, self.depths)):
            found = _STAGE_TYPE.match(str(t))
            if found is None or (found.group(2) is not None and not 0 <= int(found.group(2)) <= d):
                raise ValueError(f"AgentSwinCfg: attn_type[{i}] must be 'A', 'B' or 'M<k>' with 0 <= k <= depth "
                                 f"({d}), got {t!r}")
        self.arch()

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))

    @property
    def maps(self) -> tuple[int, ...]:
        """Build-time side of each stage's (square) map: ``img_size // patch_size // 2**i``."""
        return tuple(self.img_size // self.patch_size // 2 ** i for i in range(len(self.depths)))

    def agent_blocks(self, stage: int) -> int:
        """How many leading blocks of ``stage`` are agent blocks."""
        t = self.attn_type[stage]
        return self.depths[stage] if t == "A" else 0 if t == "B" else int(t[1:])

    def arch(self) -> HierarchicalCfg:
        window = self.window_size if self.window_size is not None else self.img_size // self.patch_size
        stages = []
        for i, (depth, width, heads, n, m) in enumerate(zip(self.depths, self.widths, self.num_heads, self.agent_num,
                                                           self.maps)):
            k = self.agent_blocks(i)
            if k and window < m:
                raise NotImplementedError(f"AgentSwinCfg: stage {i} has agent blocks on a {m}x{m} map but "
                                          f"window_size={window}; windowed agent attention (no released model "
                                          "uses it) is not implemented, agent attention here covers the whole map")
            agent = MixerCfg("agent", dict(map_size=(m, m), agent_num=int(n), qkv_bias=self.qkv_bias))
            swin = MixerCfg("swin", dict(window_size=min(max(7, window // 8), m), qkv_bias=self.qkv_bias,
                                         qk_scale=self.qk_scale), cycle=dict(shift=(False, True)))
            mixer = agent if k == depth else swin if k == 0 else (agent,) * k + (swin,) * (depth - k)
            stages.append(StageCfg(depth, width, heads, mixer, BlockCfg(self.mlp_ratio)))
        return HierarchicalCfg(tuple(stages), StemCfg("patch", self.patch_size, self.patch_norm), "merge",
                               no_weight_decay=("*.relative_position_bias_table",))


# ---- checkpoint conversion ----------------------------------------------------------------------
checkpoint_filter_fn = official_filter(SWIN_RULES)
checkpoint_filter_fn.__doc__ = """visionzoo or official (``AgentSwinTransformer``, bare or ``{"model": ...}``) keys ->
visionzoo keys; ``relative_position_index`` / ``attn_mask`` dropped; the agent biases and bias tables of a checkpoint
of another ``img_size`` resized as the official fine-tuning loader does (``agent_transformer/utils.py:
load_pretrained``: agent biases linearly, tables bicubically)."""


def parse_attn_type(attn_type: str, num_stages: int) -> tuple[str, ...]:
    """The official ``attn_type`` string -> per-stage types: one letter per stage, and an ``'M'`` stage takes
    the digits after the stage letters (``'AAMB2'`` -> ``('A', 'A', 'M2', 'B')``)."""
    head, tail = attn_type[:num_stages], attn_type[num_stages:]
    if len(head) != num_stages or any(c not in "ABM" for c in head) or ("M" in head) != bool(tail):
        raise ValueError(f"from_official: attn_type {attn_type!r} needs one of 'A', 'B', 'M' per stage "
                         f"({num_stages}), then the agent block count of 'M' stages")
    return tuple(f"M{tail}" if c == "M" else c for c in head)


def official_img_size(family: str, img_size) -> int:
    """The side of an official ``img_size`` argument (an int, or a square pair: the official ``to_2tuple``)."""
    if isinstance(img_size, (tuple, list)):
        if len(set(img_size)) != 1:
            raise NotImplementedError(f"from_official({family!r}): only a square img_size is implemented, got "
                                      f"{img_size}")
        img_size = img_size[0]
    return int(img_size)


def _official(kw: dict):
    """An official ``AgentSwinTransformer(img_size=224, patch_size=4, in_chans=3, num_classes=1000,
    embed_dim=96, depths, num_heads, window_size=7, mlp_ratio=4., qkv_bias=True, qk_scale=None, drop_rate=0.,
    attn_drop_rate=0., drop_path_rate=0.1, norm_layer=nn.LayerNorm, ape=False, patch_norm=True,
    use_checkpoint=False, agent_num=[9, 16, 49, 49], attn_type='BBBB')`` call (``models/build.py`` passes
    the yaml's ``WINDOW_SIZE``, ``AGENT.NUM.split('-')`` and ``AGENT.ATTN_TYPE``)."""
    kw = convert.check_official_kwargs("agent_swin", kw, {
        "img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depths", "num_heads", "window_size",
        "mlp_ratio", "qkv_bias", "qk_scale", "drop_rate", "attn_drop_rate", "drop_path_rate", "norm_layer", "ape",
        "patch_norm", "use_checkpoint", "agent_num", "attn_type"}, supported=dict(ape=False), layernorm_eps=1e-5)
    depths = tuple(kw.get("depths", (2, 2, 6, 2)))
    agent_num = tuple(int(n) for n in kw.get("agent_num", (9, 16, 49, 49)))[:len(depths)]
    overrides = dict(depths=depths, num_heads=tuple(kw.get("num_heads", (3, 6, 12, 24))),
                     embed_dim=int(kw.get("embed_dim", 96)),
                     img_size=official_img_size("agent_swin", kw.get("img_size", 224)),
                     attn_type=parse_attn_type(kw.get("attn_type", "BBBB"), len(depths)), agent_num=agent_num,
                     window_size=int(kw.get("window_size", 7)), mlp_ratio=float(kw.get("mlp_ratio", 4.0)),
                     qkv_bias=bool(kw.get("qkv_bias", True)), qk_scale=kw.get("qk_scale"),
                     patch_size=int(kw.get("patch_size", 4)), patch_norm=bool(kw.get("patch_norm", True)))
    model_kwargs = dict(num_classes=kw.get("num_classes", 1000), in_chans=kw.get("in_chans", 3),
                        drop_path_rate=kw.get("drop_path_rate", 0.1), proj_drop_rate=kw.get("drop_rate", 0.0),
                        attn_drop_rate=kw.get("attn_drop_rate", 0.0))
    return "agent_swin_tiny", overrides, model_kwargs


# ---- variants -----------------------------------------------------------------------------------
_TINY = AgentSwinCfg()
_SMALL = dataclasses.replace(_TINY, depths=(2, 2, 18, 2), attn_type=("A", "A", "B", "B"))
_BASE = AgentSwinCfg(depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), embed_dim=128, attn_type=("A", "A", "M2", "B"))
VARIANTS = {
    "agent_swin_tiny": _TINY,
    "agent_swin_small": _SMALL,
    "agent_swin_base": _BASE,
    "agent_swin_small_288": dataclasses.replace(_SMALL, img_size=288),
    "agent_swin_base_384": dataclasses.replace(_BASE, img_size=384),
}
#: name -> (official_params.json key, official top-1 of the released weights, ImageNet-1k)
_TOP1 = {"agent_swin_tiny": 82.6, "agent_swin_small": 83.7, "agent_swin_base": 84.0, "agent_swin_small_288": 84.1,
         "agent_swin_base_384": 84.9}
PAPER = ("Agent Attention: On the Integration of Softmax and Linear Attention", "arXiv:2312.08874")
ORIGIN = "https://github.com/LeapLabTHU/Agent-Attention"


def tiny(cfg: AgentSwinCfg) -> dict:
    """16..128 wide, one block per stage (three in an 'M<k>' stage, so it keeps both kinds); same types,
    agents and build-time size."""
    depths = tuple(3 if t.startswith("M") else 1 for t in cfg.attn_type)
    return dict(depths=depths, embed_dim=16, num_heads=(1, 2, 4, 8))


register_family(
    __name__, "agent_swin", HierarchicalNet, VARIANTS,
    {n: pretrained_cfg(paper=PAPER, origin_url=ORIGIN, first_conv="stem.proj", load="the official checkpoint",
                       size=cfg.img_size, crop_pct=0.875 if cfg.img_size == 224 else 1.0, license="unknown")
     for n, cfg in VARIANTS.items()},
    checkpoint_filter_fn,
    meta={n: dict(official_params_key=n, top1=_TOP1[n], top1_source="Agent-Attention README (ImageNet-1k)")
          for n in VARIANTS},
    official={"agent_swin": _official}, paper="Agent-Swin (agent attention)", tiny=tiny,
)
