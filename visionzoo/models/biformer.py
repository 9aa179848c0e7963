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
unmasked with ``auto_pad``). Built by :class:`~visionzoo.models._hierarchical.HierarchicalNet`
(``BiFormerCfg.arch()``); the trunk is channels-last. Official checkpoints (``{"model": sd}``
or bare) convert through :func:`checkpoint_filter_fn`; ``from_official("biformer", kwargs)``
builds the model of an official ``BiFormer(...)`` call.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import convert
from ._base import pretrained_cfg
from ._hierarchical import BlockCfg, HierarchicalCfg, HierarchicalNet, MixerCfg, StageCfg, StemCfg, per_stage
from ._registry import register_family

__all__ = ["BiFormerCfg", "VARIANTS", "checkpoint_filter_fn"]


def bra(topk: int) -> MixerCfg:
    """Bi-level routing attention over ``topk`` routed regions."""
    return MixerCfg("bra", dict(topk=topk))


GLOBAL = MixerCfg("global_lepe")  # the last stage: global attention with LePE


@dataclass(frozen=True)
class BiFormerCfg:
    depths: tuple[int, ...] = (2, 2, 8, 2)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    qk_dims: tuple[int, ...] | None = None  # default: widths
    mlp_ratios: tuple[float, ...] = (3, 3, 3, 3)
    #: the token mixer of each stage (n_win, qk_dim, side_dwconv and qk_scale below are added)
    mixers: tuple[MixerCfg, ...] = (bra(1), bra(4), bra(16), GLOBAL)
    head_dim: int = 32  # BRA heads = qk_dim // head_dim
    global_heads: int = 8  # 'global_lepe' heads (hard-coded 8 in the official AttentionLePE)
    n_win: int = 7
    side_dwconv: int = 5  # LePE kernel
    pos_kernel: int = 3  # conditional position embedding kernel (official before_attn_dwconv; 0: none)
    layer_scale: float | None = None
    qk_scale: float | None = None
    stem: StemCfg = StemCfg("conv_bn")  # StemCfg("patch_bn", 4) in the Swin layout
    downsample: str = "conv_bn"  # 'bn_patch' in the Swin layout

    def __post_init__(self):
        per_stage(self, "depths", "widths", "mlp_ratios", "mixers", *(("qk_dims",) if self.qk_dims else ()))
        self.arch()

    def arch(self) -> HierarchicalCfg:
        stages = []
        for depth, width, qk_dim, ratio, mixer in zip(self.depths, self.widths, self.qk_dims or self.widths,
                                                      self.mlp_ratios, self.mixers):
            if mixer.kind == "bra":
                heads, extra = qk_dim // self.head_dim, dict(n_win=self.n_win, qk_dim=qk_dim, qk_scale=self.qk_scale)
            else:
                heads, extra = self.global_heads, {}
            mixer = dataclasses.replace(mixer, options=dict(extra, side_dwconv=self.side_dwconv, **mixer.options))
            stages.append(StageCfg(depth, width, heads, mixer, BlockCfg(ratio, layer_scale=self.layer_scale,
                                                                        norm_eps=1e-6, pos_kernel=self.pos_kernel)))
        return HierarchicalCfg(tuple(stages), self.stem, self.downsample, final_norm="batchnorm")


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


def checkpoint_filter_fn(state_dict, model: HierarchicalNet):
    """visionzoo or official (``biformer.py`` / ``biformer_stl.py``, optionally ``{"model": ...}``) keys."""
    return convert.remap(state_dict, model, {"official": lambda sd: convert.rename(sd, _RULES)})


def _official(kw: dict):
    """An official ``BiFormer(...)`` call (``models/biformer.py``) -> a visionzoo config (the released
    configuration family: identity kv, hard routing, pre-norm, qkvo)."""
    kw = convert.check_official_kwargs("biformer", kw, {
        "depth", "in_chans", "num_classes", "embed_dim", "head_dim", "qk_scale", "representation_size",
        "drop_path_rate", "drop_rate", "use_checkpoint_stages", "n_win", "kv_downsample_mode", "kv_per_wins",
        "topks", "side_dwconv", "layer_scale_init_value", "qk_dims", "param_routing", "diff_routing",
        "soft_routing", "pre_norm", "pe", "pe_stages", "before_attn_dwconv", "auto_pad", "kv_downsample_kernels",
        "kv_downsample_ratios", "mlp_ratios", "param_attention", "mlp_dwconv"}, supported=dict(
        kv_downsample_mode="identity", param_routing=False, diff_routing=False, soft_routing=False, pre_norm=True,
        pe=None, mlp_dwconv=False, param_attention="qkvo", representation_size=None))
    topks = tuple(kw["topks"])
    if any(t in (-1, 0) or t < -2 for t in topks):  # -1: dense attention, 0: no attention in the official code
        raise NotImplementedError(f"from_official('biformer'): topks must be >= 1 (routing) or -2 (global "
                                  f"attention), got {topks}")
    ls = kw.get("layer_scale_init_value", -1)
    overrides = dict(depths=tuple(kw["depth"]), widths=tuple(kw["embed_dim"]),
                     qk_dims=tuple(kw["qk_dims"]) if kw.get("qk_dims") and None not in kw["qk_dims"] else None,
                     mlp_ratios=tuple(kw.get("mlp_ratios", (4, 4, 4, 4))),
                     mixers=tuple(bra(t) if t > 0 else GLOBAL for t in topks),
                     head_dim=kw.get("head_dim", 64), n_win=kw.get("n_win", 7), side_dwconv=kw.get("side_dwconv", 5),
                     pos_kernel=kw.get("before_attn_dwconv", 3), layer_scale=ls if ls > 0 else None,
                     qk_scale=kw.get("qk_scale"))
    model_kwargs = {k: kw[k] for k in ("num_classes", "drop_path_rate", "drop_rate", "in_chans") if k in kw}
    return "biformer_tiny", overrides, model_kwargs


# ---- variants -----------------------------------------------------------------------------------
_SWIN_LAYOUT = dict(stem=StemCfg("patch_bn", 4), downsample="bn_patch", pos_kernel=0)
VARIANTS = {
    "biformer_tiny": BiFormerCfg(),
    "biformer_small": BiFormerCfg(depths=(4, 4, 18, 4)),
    "biformer_base": BiFormerCfg(depths=(4, 4, 18, 4), widths=(96, 192, 384, 768)),
    "biformer_stl": BiFormerCfg(depths=(2, 2, 6, 2), widths=(96, 192, 384, 768), mlp_ratios=(4, 4, 4, 4),
                                **_SWIN_LAYOUT),
}
_TOP1 = {"biformer_tiny": 81.4, "biformer_small": 83.8, "biformer_base": 84.3, "biformer_stl": 82.7}
PAPER = ("BiFormer: Vision Transformer with Bi-Level Routing Attention", "arXiv:2303.08810")


def tiny(cfg: BiFormerCfg) -> dict:
    """16..64 wide, one block per stage, head dim 8, 2 x 2 regions (fewer interpreted Triton programs;
    small maps still pad and mask)."""
    return dict(depths=(1, 1, 1, 1), widths=(16, 32, 48, 64), head_dim=8, n_win=2,
                mixers=(bra(1), bra(2), bra(3), GLOBAL))


register_family(
    __name__, "biformer", HierarchicalNet, VARIANTS,
    {n: pretrained_cfg(paper=PAPER, origin_url="https://github.com/rayleizhu/BiFormer", first_conv="stem.0",
                       load="the official checkpoint", license="mit") for n in VARIANTS},
    checkpoint_filter_fn,
    meta={n: dict(official_params_key=n, top1=t, top1_source="BiFormer README (ImageNet-1k, 224)")
          for n, t in _TOP1.items()},
    official={"biformer": _official}, paper="BiFormer (bi-level routing attention)", tiny=tiny,
    aliases={"embed_dims": "widths", "before_attn_dwconv": "pos_kernel"},
)
