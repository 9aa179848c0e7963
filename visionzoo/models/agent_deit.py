"""Agent-DeiT (Han et al., *Agent Attention: On the Integration of Softmax and Linear Attention*, ECCV 2024;
``LeapLabTHU/Agent-Attention``): ``agent_deit_tiny`` / ``small`` / ``base``, ``agent_deit_small_448``.

Layout (official ``agent_transformer/models/agent_deit.py`` with ``cfgs/agent_deit_*.yaml``): DeiT. A 16x16
stride-16 patch conv (no norm; the input is zero-padded to a multiple of the patch), a class token, the
absolute position embedding ``pos_embed [1, 1 + g*g, C]`` (``g = img_size // 16``), dropout, then ``depth``
pre-norm blocks (LayerNorm eps 1e-6, MLP ratio 4): the first ``agent_layer`` blocks use agent attention
with class-token biases (:class:`~visionzoo.blocks.agent_attn_cls.AgentAttnCls`: the class token is not
pooled into the agents and gets no ``dwc``), the others plain softmax attention (Agent-DeiT-B: 4 agent
blocks, then 8 softmax blocks). Block ``i`` has ``agent_num[s]`` agents for the official stage map
``s = {0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3}[i // 2]`` (blocks past the 12th use the last entry; the
official code has no entry for them). Final LayerNorm; the head reads the class token.

``img_size`` fixes the build-time patch grid ``g x g``, which sizes ``pos_embed`` and the agent biases. Any
input size runs: the position embedding is resampled bicubically to the patch grid seen at run time (the
class token's entry kept), the agent biases are interpolated as in
:class:`~visionzoo.blocks.agent_attn.AgentAttn`; the official model runs only at ``img_size``. A checkpoint of
another ``img_size`` (224 -> ``agent_deit_small_448``, the official fine-tune) loads by resizing them as the
official fine-tuning loader does: ``pos_embed`` bicubically, ``ah/aw/ha/wa_bias`` linearly. A 224 model run
at 448 therefore computes what the 448 model loaded with its weights computes.

Model contract. The ``depth`` blocks are grouped into 4 feature levels (3 blocks each for depth 12; official
``blocks.{j}`` -> ``stages.{s}.blocks.{b}``), all at stride 16, as the isotropic NAT models. The taps
(``forward_intermediates``, ``features_only``) are the patch tokens as NCHW maps, without the class token.
``features_only=True, feature_pyramid="simple"`` gives ViTDet's simple pyramid instead (strides 4, 8, 16, 32 from
the last group's patch map; ``out_indices`` then index those levels), as for the isotropic NAT models.
``forward_features`` returns the whole normalised token sequence as ``[B, C, 1, 1 + H*W]`` (timm ViT's
``[B, 1 + N, C]`` channels-first, class token first), which the head pools: ``global_pool='token'`` (the
class token, official), ``'avg'`` (mean of the patch tokens) or ``''`` (none).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp, get_device_dtype, register_notrace_function, resample_abs_pos_embed
from timm.layers.attention import Attention
from timm.models._features import feature_take_indices

from .. import convert
from ..blocks import fused_eval
from ..blocks.agent_attn_cls import AgentAttnCls
from ..blocks._script import parent_forward
from ._base import Backbone, drop_path_rates, init_linear_trunc_normal, pretrained_cfg
from ._checks import check_image_batch
from ._hierarchical import STEMS, StemCfg
from ._pvt_swin_convert import fit_resolution
from ._registry import register_family
from ._simple_pyramid import SimplePyramidMixin, pyramid_filter
from .agent_swin import ORIGIN, PAPER, official_img_size
from .nat_isotropic import _group

torch.fx.wrap("check_image_batch")  # the shared input check, a leaf for FX tracers

__all__ = ["AgentDeiTCfg", "AgentDeiT", "AgentDeiTTrunk", "VARIANTS", "checkpoint_filter_fn"]

#: official ``stage_num``: block ``i`` takes ``agent_num[_STAGE_OF_PAIR[i // 2]]``
_STAGE_OF_PAIR = {0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3}


@dataclass(frozen=True)
class AgentDeiTCfg:
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    agent_num: tuple[int, ...] = (49, 49, 49, 49)  # per official stage (see the module docstring)
    agent_layer: int = -1  # blocks [0, agent_layer) use agent attention; <= 0: all (official)
    img_size: int = 224  # build-time input size: sizes pos_embed and the agent biases
    patch_size: int = 16
    qkv_bias: bool = True
    norm_eps: float = 1e-6

    def __post_init__(self):
        if self.depth < 1 or self.embed_dim < 1 or self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise ValueError(f"AgentDeiTCfg: depth >= 1 and embed_dim divisible by num_heads needed, got depth="
                             f"{self.depth}, embed_dim={self.embed_dim}, num_heads={self.num_heads}")
        if len(self.agent_num) != 4:
            raise ValueError(f"AgentDeiTCfg: agent_num needs 4 entries (the official stage map), "
                             f"got {self.agent_num!r}")
        if not isinstance(self.img_size, int) or self.img_size < self.patch_size:
            raise ValueError(f"AgentDeiTCfg: img_size must be an int >= patch_size ({self.patch_size}), "
                             f"got {self.img_size!r}")

    @property
    def grid(self) -> int:
        """Build-time side of the patch grid (the official ``window``)."""
        return self.img_size // self.patch_size

    def block_agents(self, i: int) -> int | None:
        """Agents of block ``i``, or None for a plain softmax-attention block."""
        n_agent = self.agent_layer if self.agent_layer > 0 else self.depth
        return int(self.agent_num[_STAGE_OF_PAIR.get(i // 2, 3)]) if i < n_agent else None


@torch.fx.wrap
@register_notrace_function  # shape-dependent Python: a leaf for FX
def pos_embed_for(pos_embed: torch.Tensor, grid: int, height: int, width: int) -> torch.Tensor:
    """``pos_embed [1, 1 + grid * grid, C]`` for a ``height x width`` patch map: the patch entries resampled
    bicubically (``align_corners=False``, no antialiasing: the official fine-tuning loader's resize), the class
    token's kept."""
    return resample_abs_pos_embed(pos_embed, [height, width], [grid, grid], num_prefix_tokens=1, antialias=False)


class SoftmaxAttn(Attention):
    """timm's softmax ``Attention`` (same keys) called as the agent attention is, with the patch grid ``size``
    (unused): blocks call either without a type test (TorchScript does not resolve ``isinstance`` on
    submodules whose types it specialises per block, e.g. agent counts that differ per block)."""

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self._attend(x)

    _attend = parent_forward(Attention, "_attend")


class TokenBlock(nn.Module):
    """Pre-norm ViT block on ``[B, 1 + H*W, C]`` tokens: ``x + drop_path(attn(norm1(x), size))``, then the MLP.
    ``attn`` is :class:`~visionzoo.blocks.agent_attn_cls.AgentAttnCls` or :class:`SoftmaxAttn`."""

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float, eps: float, proj_drop: float, drop_path: float,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, eps=eps, **dd)
        self.attn = attn
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop, **dd)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.drop_path(self.attn(y, size))
        if not torch.jit.is_scripting():  # a static branch: TorchScript compiles the plain modules only
            if fused_eval.mlp_applies(self, self.mlp, x):  # inference: two oneDNN GEMMs
                return fused_eval.mlp_add(self, self.mlp, self.norm2(x), x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TokenStage(nn.Module):
    """A group of :class:`TokenBlock` (one feature level; no downsampling)."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)  # not Sequential: TorchScript would compile its one-argument forward

    def forward(self, x: torch.Tensor, size: tuple[int, int], checkpoint: bool = False) -> torch.Tensor:
        if torch.jit.is_scripting():  # a static branch: no activation checkpointing in TorchScript
            for blk in self.blocks:
                x = blk(x, size)
            return x
        for blk in self.blocks:
            x = torch.utils.checkpoint.checkpoint(blk, x, size, use_reentrant=False) if checkpoint else blk(x, size)
        return x


class TokenHead(nn.Module):
    """Classifier on ``[B, C, 1, 1 + N]`` token sequences: pool (``'token'``: the class token, ``'avg'``: the
    mean patch token, ``''``: none), dropout, ``fc`` (per token when not pooled)."""

    POOLS = ("token", "avg", "")

    def __init__(self, in_features: int, num_classes: int, pool_type: str = "token", drop_rate: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes, pool_type, device=device, dtype=dtype)

    def reset(self, num_classes: int, pool_type: str | None = None, in_features: int | None = None,
              device=None, dtype=None) -> None:
        if pool_type is not None:
            if pool_type not in self.POOLS:
                raise ValueError(f"global_pool must be one of {self.POOLS}, got {pool_type!r}")
            self.pool_type = pool_type
        self.in_features = in_features or self.in_features
        self.fc = nn.Linear(self.in_features, num_classes, device=device, dtype=dtype) if num_classes > 0 \
            else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool_type == "token":
            x = x[:, :, 0, 0]
        elif self.pool_type == "avg":
            x = x[:, :, 0, 1:].mean(-1)
        x = self.drop(x)
        if pre_logits:
            return x
        return self.fc(x) if self.pool_type else self.fc(x.movedim(1, -1)).movedim(-1, 1)


class AgentDeiTTrunk(Backbone):
    """Agent-DeiT without the detection option (see :class:`AgentDeiT`).

    Args:
        cfg: :class:`AgentDeiTCfg`.
        global_pool: ``'token'`` (official), ``'avg'`` or ``''``.
        drop_rate: dropout before the classifier.
        proj_drop_rate: the official ``drop_rate``: after the position embedding, in the MLPs, after ``proj``.
        attn_drop_rate: softmax blocks' attention dropout (agent blocks take only 0, as the official configs).
        drop_path_rate: stochastic depth, linear over the blocks.
        backend: :func:`~visionzoo.ops.agent_attn` backend (``None``: resolved per call).
    """

    nwd_patterns = ("pos_embed", "cls_token")  # the official no_weight_decay

    def __init__(self, cfg: AgentDeiTCfg, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "token",
                 drop_rate: float = 0.0, proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, backend: str | None = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.cfg = cfg
        dim, g = cfg.embed_dim, cfg.grid
        self.grid = g  # an int attribute TorchScript sees (not the config dataclass)
        self.stem = STEMS["patch"][0](in_chans, dim, StemCfg("patch", cfg.patch_size, norm=False), dd)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim, **dd))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + g * g, dim, **dd))
        self.pos_drop = nn.Dropout(proj_drop_rate)
        groups = _group(cfg.depth)
        dpr = [r for rates in drop_path_rates(drop_path_rate, groups) for r in rates]
        blocks = [TokenBlock(dim, self._attn(i, attn_drop_rate, proj_drop_rate, backend, dd), cfg.mlp_ratio,
                             cfg.norm_eps, proj_drop_rate, dpr[i], **dd) for i in range(cfg.depth)]
        starts = [sum(groups[:s]) for s in range(len(groups))]
        self.stages = nn.ModuleList([TokenStage(blocks[a:a + n]) for a, n in zip(starts, groups)])  # as blocks
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps, **dd)
        self.head = TokenHead(dim, num_classes, global_pool, drop_rate, **dd)
        self._finish(in_chans, num_classes, [dim] * len(groups), [cfg.patch_size] * len(groups), global_pool)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_linear_trunc_normal)

    def _attn(self, i: int, attn_drop: float, proj_drop: float, backend: str | None, dd: dict) -> nn.Module:
        cfg, agents = self.cfg, self.cfg.block_agents(i)
        if agents is None:
            return SoftmaxAttn(cfg.embed_dim, cfg.num_heads, qkv_bias=cfg.qkv_bias, attn_drop=attn_drop,
                               proj_drop=proj_drop, **dd)
        return AgentAttnCls(cfg.embed_dim, cfg.num_heads, map_size=(cfg.grid, cfg.grid), agent_num=agents,
                            qkv_bias=cfg.qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, backend=backend, **dd)

    @staticmethod
    def num_stages(cfg: AgentDeiTCfg) -> int:
        return len(_group(cfg.depth))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|^pos_embed|^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^norm", (99999,))])

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head.reset(num_classes, global_pool, **get_device_dtype(self))
        self.head.train(self.training)

    # ---- trunk ----------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image -> ``[cls, patches] + pos_embed`` tokens ``[B, 1 + H*W, C]`` and the patch grid ``(H, W)``."""
        check_image_batch(x, self.in_chans)
        x = self.stem(x)  # [B, H, W, C]
        B, H, W, C = x.shape
        x = torch.cat([self.cls_token.expand(B, -1, -1), x.reshape(B, H * W, C)], 1)
        x = x + pos_embed_for(self.pos_embed, self.grid, H, W)
        return self.pos_drop(x), (H, W)

    def _run(self, stage: TokenStage, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return stage(x, size, checkpoint=self.grad_checkpointing and not torch.jit.is_scripting())

    @staticmethod
    def _patch_map(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Tokens ``[B, 1 + H*W, C]`` -> the patch map ``[B, C, H, W]`` (class token dropped)."""
        return x[:, 1:].transpose(1, 2).reshape(x.shape[0], x.shape[2], *size).contiguous()

    @staticmethod
    def _sequence(x: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, 1 + N, C]`` -> ``[B, C, 1, 1 + N]`` (``forward_features``' layout)."""
        return x.transpose(1, 2).unsqueeze(2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, H, W]`` -> the normalised tokens ``[B, C, 1, 1 + H/16 * W/16]`` (class token first)."""
        x, size = self._embed(x)
        for stage in self.stages:  # not _run: TorchScript takes no module arguments (TokenStage skips checkpointing)
            x = stage(x, size, checkpoint=self.grad_checkpointing)
        return self._sequence(self.norm(x))

    @torch.jit.ignore
    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Patch maps (NCHW, no class token) of the selected levels, and the ``forward_features`` output
        (un-normalised when ``stop_early`` stopped before the last level); as
        :meth:`Backbone.forward_intermediates`."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' (the layout every visionzoo tap uses), got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        intermediates = []
        x, size = self._embed(x)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        for i, stage in enumerate(stages):
            x = self._run(stage, x, size)
            if i in take_indices:
                intermediates.append(self._patch_map(self.norm(x) if norm and i == last else x, size))
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.stages):
            x = self.norm(x)
        return self._sequence(x), intermediates


class AgentDeiT(SimplePyramidMixin, AgentDeiTTrunk):
    """Agent-DeiT (see the module docstring).

    Args: as :class:`AgentDeiTTrunk`, and ``feature_pyramid``: ``None`` (the feature levels are the 4 block
        groups, all at stride 16) or ``"simple"`` (ViTDet's simple pyramid, strides 4, 8, 16, 32, from the last
        group's patch map: :class:`~visionzoo.models._simple_pyramid.SimplePyramidMixin`).
    """

    def __init__(self, cfg: AgentDeiTCfg, *args, feature_pyramid: str | None = None, **kwargs):
        super().__init__(cfg, *args, **kwargs)
        self._add_pyramid(feature_pyramid, device=kwargs.get("device"), dtype=kwargs.get("dtype"))


# ---- checkpoint conversion ----------------------------------------------------------------------
def _official(sd: dict, target: dict, depth: int) -> dict:
    groups = _group(depth)
    where = {j: (s, j - sum(groups[:s])) for s in range(len(groups)) for j in range(sum(groups[:s]),
                                                                                      sum(groups[:s + 1]))}
    rules = [(r"^patch_embed\.", "stem."), (r"^head\.", "head.fc."),
             (r"^blocks\.(\d+)\.", lambda m: "stages.{}.blocks.{}.".format(*where[int(m.group(1))]))]
    return convert.rename(sd, rules)


def _filter(state_dict, model):
    """visionzoo or official (``VisionTransformer`` of ``agent_deit.py``, bare or ``{"model": ...}``) keys ->
    visionzoo keys (``blocks.{j}`` -> ``stages.{s}.blocks.{b}``, ``patch_embed`` -> ``stem``); a checkpoint of
    another ``img_size`` has ``pos_embed`` resized bicubically (class token kept) and the agent biases linearly,
    as the official fine-tuning loader (``utils.load_pretrained``) does."""
    target = model.state_dict()
    sd = convert.remap(state_dict, model, {"official": lambda s: _official(s, target, model.cfg.depth)})
    sd = fit_resolution(sd, target)
    pos, want = sd.get("pos_embed"), target.get("pos_embed")
    if pos is not None and want is not None and pos.shape != want.shape and pos.shape[2] == want.shape[2]:
        old, new = _side(pos.shape[1] - 1), _side(want.shape[1] - 1)
        if old and new:
            sd["pos_embed"] = resample_abs_pos_embed(pos, [new, new], [old, old], num_prefix_tokens=1,
                                                     antialias=False)
    return sd


checkpoint_filter_fn = pyramid_filter(_filter)


def _side(n: int) -> int:
    side = int(round(n ** 0.5))
    return side if side * side == n else 0


def _official_model(kw: dict):
    """An official ``VisionTransformer(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768,
    depth=12, num_heads=12, mlp_ratio=4., qkv_bias=True, representation_size=None, distilled=False, drop_rate=0.,
    attn_drop_rate=0., drop_path_rate=0., embed_layer=PatchEmbed, norm_layer=None, act_layer=None, weight_init='',
    agent_num=[49, 49, 49, 49], agent_layer=-1)`` call of ``agent_deit.py`` (``norm_layer=None``: LayerNorm eps
    1e-6). Distillation tokens, representation layers and other embed / norm / activation layers are not
    implemented."""
    kw = convert.check_official_kwargs("agent_deit", kw, {
        "img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio",
        "qkv_bias", "representation_size", "distilled", "drop_rate", "attn_drop_rate", "drop_path_rate",
        "embed_layer", "norm_layer", "act_layer", "weight_init", "agent_num", "agent_layer"},
        supported={"representation_size": None, "distilled": False, "embed_layer": None, "act_layer": None})
    norm = kw.get("norm_layer")
    eps = 1e-6 if norm is None else convert.official_layernorm_eps("agent_deit", norm)
    agent_num = kw.get("agent_num", (49, 49, 49, 49))
    agent_num = tuple(int(n) for n in (agent_num.split("-") if isinstance(agent_num, str) else agent_num))
    overrides = dict(embed_dim=int(kw.get("embed_dim", 768)), depth=int(kw.get("depth", 12)),
                     num_heads=int(kw.get("num_heads", 12)), mlp_ratio=float(kw.get("mlp_ratio", 4.0)),
                     agent_num=agent_num, agent_layer=int(kw.get("agent_layer", -1)),
                     img_size=official_img_size("agent_deit", kw.get("img_size", 224)),
                     patch_size=int(kw.get("patch_size", 16)), qkv_bias=bool(kw.get("qkv_bias", True)), norm_eps=eps)
    model_kwargs = dict(num_classes=kw.get("num_classes", 1000), in_chans=kw.get("in_chans", 3),
                        drop_path_rate=kw.get("drop_path_rate", 0.0), proj_drop_rate=kw.get("drop_rate", 0.0),
                        attn_drop_rate=kw.get("attn_drop_rate", 0.0))
    return "agent_deit_small", overrides, model_kwargs


# ---- variants -----------------------------------------------------------------------------------
_SMALL = AgentDeiTCfg()
VARIANTS = {
    "agent_deit_tiny": dataclasses.replace(_SMALL, embed_dim=192, num_heads=3),
    "agent_deit_small": _SMALL,
    "agent_deit_base": dataclasses.replace(_SMALL, embed_dim=768, num_heads=12, agent_num=(81,) * 4, agent_layer=4),
    "agent_deit_small_448": dataclasses.replace(_SMALL, img_size=448),
}
#: official top-1 (ImageNet-1k) and config file of each variant
_TOP1 = {"agent_deit_tiny": 74.9, "agent_deit_small": 80.5, "agent_deit_base": 82.0, "agent_deit_small_448": 83.1}
_CONFIG = {"agent_deit_tiny": "agent_deit_t", "agent_deit_small": "agent_deit_s", "agent_deit_base": "agent_deit_b",
           "agent_deit_small_448": "agent_deit_s_448"}


def tiny(cfg: AgentDeiTCfg) -> dict:
    """48 wide, 3 heads, 4 blocks (one per level), 9 / 9 / 16 / 16 agents (the fixture's layout); the base's
    agent_layer kept, so its reduced form has softmax blocks too."""
    return dict(embed_dim=48, num_heads=3, depth=4, agent_num=(9, 16, 49, 49),
                agent_layer=2 if cfg.agent_layer > 0 else -1)


register_family(
    __name__, "agent_deit", AgentDeiT, VARIANTS,
    {n: pretrained_cfg(paper=PAPER, origin_url=ORIGIN, first_conv="stem.proj", load="the official checkpoint",
                       size=cfg.img_size, license="unknown", pool_size=(1, 1 + cfg.grid ** 2))
     for n, cfg in VARIANTS.items()},  # pool_size: forward_features' unpooled [B, C, 1, 1 + g*g] sequence
    checkpoint_filter_fn,
    meta={n: dict(official_params_key=n, official_name=f"{n} (cfgs/{_CONFIG[n]}.yaml)", top1=_TOP1[n],
                  top1_source="Agent-Attention README (ImageNet-1k)") for n in VARIANTS},
    official={"agent_deit": _official_model}, paper="Agent-DeiT (agent attention)", tiny=tiny,
)
