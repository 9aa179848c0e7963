"""VAN (Guo et al., *Visual Attention Network*, arXiv 2202.09741; ``Visual-Attention-Network/VAN-Classification``):
``van_b0`` ... ``van_b6``.

Layout (official ``models/van.py``): ``OverlapPatchEmbed`` = 7x7 s4 conv (padding 3) + BatchNorm for
stage 1, 3x3 s2 conv (padding 1) + BatchNorm opening stages 2-4; blocks ``x += ls1 * attn(BN(x))``,
``x += ls2 * mlp(BN(x))`` with per-channel layer scales (init 1e-2), ``attn`` =
:class:`~visionzoo.blocks.large_kernel_attn.VanAttn` (1x1 -> GELU -> LKA -> 1x1, plus its own inner
shortcut), ``mlp`` = 1x1 -> depthwise 3x3 -> GELU -> 1x1
(:class:`~visionzoo.blocks.DWConvMlp`); every stage closes with a LayerNorm (eps 1e-6) over its
tokens, which is part of the stage: stage taps are normed, there is no other final norm, and the
head averages the stage-4 normed tokens. Built by :class:`~visionzoo.models._hierarchical.HierarchicalNet`
(``VANCfg.arch()``) on channels-last maps, so the official 1x1 convolutions are Linear layers here
(the converter reshapes ``[O, I, 1, 1]`` weights to ``[O, I]``).

Any input size works, as in the official code: every conv is zero-padded ("same" for the LKA and
MLP convs, ``ceil(n / 4)`` then ``ceil(n / 2)`` per stage for the patch embeds).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


from .. import convert
from ._base import pretrained_cfg
from ._hierarchical import BlockCfg, HierarchicalCfg, HierarchicalNet, MixerCfg, StageCfg, StemCfg, per_stage
from ._registry import register_family

__all__ = ["VANCfg", "VARIANTS", "checkpoint_filter_fn"]


@dataclass(frozen=True)
class VANCfg:
    depths: tuple[int, ...] = (3, 3, 5, 2)
    widths: tuple[int, ...] = (32, 64, 160, 256)  # official embed_dims
    mlp_ratios: tuple[float, ...] = (8, 8, 4, 4)
    layer_scale: float = 1e-2
    dilation: int = 3  # of LKA's 7x7 depthwise conv
    norm_eps: float = 1e-6  # the LayerNorm closing each stage (official norm_layer=partial(LayerNorm, eps=1e-6))

    def __post_init__(self):
        per_stage(self, "depths", "widths", "mlp_ratios")
        self.arch()

    def arch(self) -> HierarchicalCfg:
        mixer = MixerCfg("lka", dict(dilation=self.dilation))
        stages = tuple(StageCfg(d, w, 1, mixer, BlockCfg(r, "dwconv_mlp", self.layer_scale, norm="batchnorm"))
                       for d, w, r in zip(self.depths, self.widths, self.mlp_ratios))
        return HierarchicalCfg(stages, StemCfg("overlap_bn"), "conv_bn", final_norm="none", stage_norm="layernorm",
                               stage_norm_eps=self.norm_eps)


# ---- checkpoint conversion ----------------------------------------------------------------------
_RULES = [
    (r"^patch_embed1\.proj\.", "stem.0."),
    (r"^patch_embed1\.norm\.", "stem.1."),
    (r"^patch_embed(\d)\.proj\.", lambda m: f"stages.{int(m.group(1)) - 1}.downsample.0."),
    (r"^patch_embed(\d)\.norm\.", lambda m: f"stages.{int(m.group(1)) - 1}.downsample.1."),
    (r"^block(\d)\.(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
    (r"^norm(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.norm."),
    (r"\.layer_scale_([12])$", r".ls\1.gamma"),
    (r"\.attn\.spatial_gating_unit\.", ".attn.lka."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^head\.", "head.fc."),
]


def _squeeze_1x1(key: str, value):
    """The official 1x1 convs are Linear layers here: ``[O, I, 1, 1]`` -> ``[O, I]`` (no other VAN weight
    is 1x1: the depthwise kernels are 3, 5, 7 and the patch embeds 7, 3)."""
    return value.flatten(1) if value.dim() == 4 and tuple(value.shape[2:]) == (1, 1) else value


def checkpoint_filter_fn(state_dict, model: HierarchicalNet):
    """visionzoo or official (``VAN``, bare or ``{"state_dict": ...}``) keys -> visionzoo keys."""
    return convert.remap(state_dict, model, {"official": lambda sd: convert.rename(sd, _RULES, _squeeze_1x1)})


def _official(kw: dict):
    """An official ``VAN(img_size=224, in_chans=3, num_classes=1000, embed_dims, mlp_ratios, drop_rate=0.,
    drop_path_rate=0., norm_layer=nn.LayerNorm, depths, num_stages=4, flag=False)`` call."""
    kw = convert.check_official_kwargs("van", kw, {"img_size", "in_chans", "num_classes", "embed_dims", "mlp_ratios",
                                                   "drop_rate", "drop_path_rate", "norm_layer", "depths",
                                                   "num_stages", "flag"}, supported=dict(flag=False))
    depths = tuple(kw.get("depths", (3, 4, 6, 3)))
    if kw.get("num_stages", 4) != len(depths) or len(depths) != 4:
        raise NotImplementedError(f"from_official('van'): only num_stages=4 with four depths is implemented, got "
                                  f"num_stages={kw.get('num_stages', 4)}, depths={depths}")
    eps = convert.official_layernorm_eps("van", kw.get("norm_layer"))
    overrides = dict(depths=depths, widths=tuple(kw.get("embed_dims", (64, 128, 256, 512))),
                     mlp_ratios=tuple(kw.get("mlp_ratios", (4, 4, 4, 4))), norm_eps=eps)
    model_kwargs = dict(num_classes=kw.get("num_classes", 1000), in_chans=kw.get("in_chans", 3),
                        drop_path_rate=kw.get("drop_path_rate", 0.0), proj_drop_rate=kw.get("drop_rate", 0.0))
    return "van_b0", overrides, model_kwargs


# ---- variants -----------------------------------------------------------------------------------
_B1 = VANCfg(depths=(2, 2, 4, 2), widths=(64, 128, 320, 512))
VARIANTS = {
    "van_b0": VANCfg(),
    "van_b1": _B1,
    "van_b2": dataclasses.replace(_B1, depths=(3, 3, 12, 3)),
    "van_b3": dataclasses.replace(_B1, depths=(3, 5, 27, 3)),
    "van_b4": dataclasses.replace(_B1, depths=(3, 6, 40, 3)),
    "van_b5": VANCfg(depths=(3, 3, 24, 3), widths=(96, 192, 480, 768)),
    "van_b6": VANCfg(depths=(6, 6, 90, 6), widths=(96, 192, 384, 768)),
}
#: official top-1 (ImageNet-1k, 224) of the released weights; B4-B6 have none in the official repository
_TOP1 = {"van_b0": 75.4, "van_b1": 81.1, "van_b2": 82.8, "van_b3": 83.9}
PAPER = ("Visual Attention Network", "arXiv:2202.09741")


def tiny(cfg: VANCfg) -> dict:
    """16..64 wide, one block per stage."""
    return dict(depths=(1, 1, 1, 1), widths=(16, 32, 48, 64))


register_family(
    __name__, "van", HierarchicalNet, VARIANTS,
    {n: pretrained_cfg(paper=PAPER, origin_url="https://github.com/Visual-Attention-Network/VAN-Classification",
                       first_conv="stem.0", load="the official checkpoint", crop_pct=0.9, license="apache-2.0")
     for n in VARIANTS},
    checkpoint_filter_fn,
    meta={n: dict(official_params_key=n, **(dict(top1=_TOP1[n], top1_source="VAN README (ImageNet-1k, 224)")
                                              if n in _TOP1 else {})) for n in VARIANTS},
    official={"van": _official}, paper="VAN (large kernel attention)", tiny=tiny,
    aliases={"embed_dims": "widths"},
)
