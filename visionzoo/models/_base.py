"""The backbone contract, written once (reference/ecosystem.md §1).

A family model subclasses :class:`Backbone`, builds ``stem``, ``stages`` (an ``nn.Sequential``, one
entry per feature level), ``norm`` (final norm or ``Identity``) and ``head`` (timm
``ClassifierHead``), then calls :meth:`Backbone._finish`. Everything timm and the detection stacks
expect (``forward_intermediates``, ``prune_intermediate_layers``, ``reset_classifier``, grad
checkpointing, ``group_matcher``, ``feature_info``) comes from here.

Families whose blocks work on token maps set ``nhwc_stages = True``: stage outputs are logically
``[B, H, W, C]`` internally, but every tensor the model returns (features, intermediates) is NCHW.
(Not to be confused with channels-last *memory format*, :mod:`visionzoo.blocks.channels_last`.)

Family boilerplate lives here once: :func:`drop_path_rates`, :func:`init_linear_trunc_normal`,
:func:`pretrained_cfg`, and the default :meth:`Backbone.num_stages` (``len(cfg.depths)``).
"""

import inspect
from collections import OrderedDict
from typing import Iterable

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import get_device_dtype, register_notrace_function, resample_abs_pos_embed
from timm.models._features import FeatureGetterNet, feature_take_indices
from timm.models._manipulate import checkpoint_seq

from ._checks import check_image_batch, check_num_classes

torch.fx.wrap("check_image_batch")  # a leaf for every FX tracer (shape checks are Python control flow)

__all__ = ["Backbone", "BackboneFeatures", "Stage", "drop_path_rates", "feature_cfg", "init_linear_trunc_normal",
           "pretrained_cfg"]


class Backbone(nn.Module):
    # Subclasses set: ``stem``, ``stages`` (nn.Sequential), ``norm`` (final norm or head conv after the
    # last stage; Identity if none) and ``head``. (No class-level annotations: TorchScript reads them.)
    nhwc_stages: bool = False
    #: parameter-name patterns excluded from weight decay (fnmatch, as timm's optimizer factory reads them);
    #: a tuple of str, unannotated: TorchScript cannot type an instance's ``tuple[str, ...]``
    nwd_patterns = ()

    def _finish(self, in_chans: int, num_classes: int, stage_chs: Iterable[int], reductions: Iterable[int],
                global_pool: str, num_features: int | None = None, stem_level: tuple[int, int] | None = None) -> None:
        """Record the contract attributes once the modules exist.

        ``num_features`` defaults to the last stage's width; pass it when ``norm`` changes the width
        (e.g. MobileNetV2's final 1x1 conv, which sits in the ``norm`` slot). ``stem_level=(channels,
        reduction)`` makes the stem's tap (:meth:`_stem_with_tap`, e.g. a ResNet's stride-2 map before its
        max-pool, as timm's ResNets) feature level 0; the stages are then levels 1...
        """
        stage_chs, reductions = list(stage_chs), list(reductions)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = num_features or stage_chs[-1]
        self.stem_level = stem_level is not None
        stem = [dict(num_chs=stem_level[0], reduction=stem_level[1], module="stem", index=0, stage=0)] \
            if stem_level else []
        self.feature_info = stem + [dict(num_chs=c, reduction=r, module=f"stages.{i}", index=i + len(stem),
                                         stage=i + len(stem)) for i, (c, r) in enumerate(zip(stage_chs, reductions))]
        self.grad_checkpointing = False
        self.nhwc_stages = type(self).nhwc_stages  # an instance attribute TorchScript sees

    @staticmethod
    def num_stages(cfg) -> int:
        """Feature levels of a model built from ``cfg`` (the registry's default ``out_indices``)."""
        return len(cfg.depths)

    # ---- training hooks -------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.(?:blocks\.)?(\d+)", None), (r"^stages\.(\d+)", (0,)), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set(self.nwd_patterns)

    # ---- head -----------------------------------------------------------------------------
    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier of ``num_classes`` (0 removes it); ``global_pool=None`` keeps the pooling."""
        check_num_classes(num_classes)
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head.reset(num_classes, pool_type=global_pool, **dd)
        self.head.train(self.training)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    # ---- trunk ----------------------------------------------------------------------------
    def _stem_with_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(stem output, stem level)`` for families with ``stem_level`` (see :meth:`_finish`)."""
        raise NotImplementedError(f"{type(self).__name__} has no stem feature level")

    def _to_nchw(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2) if self.nhwc_stages else x

    @torch.jit.ignore
    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing:
            if isinstance(stage, Stage):  # checkpoint block by block
                return stage.norm(checkpoint_seq(stage.blocks, stage.enter(x)))
            return checkpoint_seq(stage, x) if isinstance(stage, nn.Sequential) else \
                torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
        return stage(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, H, W]`` -> ``[B, num_features, H/r, W/r]`` (after the final norm, before pooling)."""
        check_image_batch(x, self.in_chans)
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for stage in self.stages:
                x = self._run_stage(stage, x)
        else:
            x = self.stages(x)
        x = self.norm(x)
        return self._to_nchw(x).contiguous() if self.nhwc_stages else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Features of the selected stages (NCHW), and the final ``forward_features`` output.

        Args:
            indices: None for all stages, ``n`` for the last ``n``, or a list (negatives allowed).
            norm: apply the final norm to the last stage's tap.
            stop_early: stop after the last requested stage (``final`` is then that stage's output).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' (the layout every visionzoo tap uses), got {output_fmt!r}")
        check_image_batch(x, self.in_chans)
        first = int(self.stem_level)  # level of stage 0
        take_indices, max_index = feature_take_indices(len(self.stages) + first, indices)
        last = len(self.stages) - 1
        intermediates = []
        if first:
            x, tap = self._stem_with_tap(x)
            if 0 in take_indices:
                intermediates.append(tap)
        else:
            x = self.stem(x)
        stages = self.stages[:max_index + 1 - first] if stop_early else self.stages
        for i, stage in enumerate(stages):
            x = self._run_stage(stage, x)
            if i + first in take_indices:
                tap = self.norm(x) if norm and i == last else x
                intermediates.append(self._to_nchw(tap).contiguous())
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.stages):
            x = self.norm(x)
        return (self._to_nchw(x).contiguous() if self.nhwc_stages else x), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last requested tap (and optionally the norm and head)."""
        first = int(self.stem_level)  # level of stage 0
        take_indices, max_index = feature_take_indices(len(self.stages) + first, indices)
        pruned = max_index < len(self.stages) + first - 1
        self.stages = self.stages[:max_index + 1 - first]
        self.feature_info = self.feature_info[:max_index + 1]
        self.num_features = self.head_hidden_size = self.feature_info[-1]["num_chs"]
        if prune_norm or pruned:  # the final norm is sized for the last stage
            self.norm = nn.Identity()
        # a head with its own norm / pre-logits layers (timm NormMlpClassifierHead) drops them too
        other = {"reset_other": True} if "reset_other" in inspect.signature(self.head.reset).parameters else {}
        if prune_head:
            self.num_classes, self.global_pool = 0, ""
            self.head.reset(0, "", **other, **get_device_dtype(self))
        elif pruned:
            self.head.reset(self.num_classes, in_features=self.num_features, **other, **get_device_dtype(self))
        self.head.train(self.training)
        return take_indices


@torch.fx.wrap
@register_notrace_function  # shape-dependent Python: a leaf for FX
def add_abs_pos_embed(x: torch.Tensor, pos_embed: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` ``[B, H, W, C]`` plus ``pos_embed`` ``[1, h * w, C]`` (for ``size = (h, w)``), bilinearly
    resampled to ``H x W`` when the sizes differ (``align_corners=False``, no antialiasing)."""
    B, H, W, C = x.shape
    pos = resample_abs_pos_embed(pos_embed, [H, W], list(size), num_prefix_tokens=0, interpolation="bilinear",
                                 antialias=False)
    return x + pos.reshape(1, H, W, C)


class Stage(nn.Module):
    """One feature level: ``downsample`` (``Identity`` where the stage keeps the resolution or its
    first block strides), ``blocks`` (an ``nn.Sequential``, checkpointed block by block), then
    ``norm`` closing the stage (PVTv2 / VAN; ``Identity`` without state when none is given).

    ``pos_embed_size=(h, w)`` adds PVT v1's absolute position embedding after the downsample: a
    parameter ``pos_embed`` ``[1, h * w, C]`` (the official shape) for the map the model was built
    for, bilinearly resampled (``align_corners=False``, no antialiasing: the official
    ``_get_pos_embed``) to other maps, then dropout ``pos_drop``. ``[B, H, W, C]`` maps only.
    """

    def __init__(self, downsample: nn.Module, blocks: list[nn.Module], norm: nn.Module | None = None,
                 pos_embed_size: tuple[int, int] | None = None, pos_drop: float = 0.0, width: int | None = None,
                 device=None, dtype=None):
        super().__init__()
        self.downsample = downsample
        self.pos_embed_size = None if pos_embed_size is None else tuple(pos_embed_size)
        if self.pos_embed_size is None:
            self.register_parameter("pos_embed", None)
        else:
            if width is None or len(self.pos_embed_size) != 2 or min(self.pos_embed_size) < 1:
                raise ValueError(f"Stage: pos_embed_size must be a pair of positive ints and width given, got "
                                 f"pos_embed_size={pos_embed_size!r}, width={width!r}")
            h, w = self.pos_embed_size
            self.pos_embed = nn.Parameter(torch.zeros(1, h * w, width, device=device, dtype=dtype))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(pos_drop) if pos_drop > 0 else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.Identity() if norm is None else norm

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        """What runs before the blocks: the downsample, then the position embedding and its dropout."""
        x = self.downsample(x)
        if self.pos_embed is not None:
            x = self.pos_drop(add_abs_pos_embed(x, self.pos_embed, self.pos_embed_size))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.enter(x)))


def drop_path_rates(rate: float, depths: Iterable[int]) -> list[list[float]]:
    """Stochastic-depth rate of every block, linear from 0 to ``rate`` over all blocks, per stage."""
    depths = list(depths)
    n = sum(depths)
    flat = [rate * i / max(n - 1, 1) for i in range(n)]
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [flat[s:s + d] for s, d in zip(starts, depths)]


def init_linear_trunc_normal(m: nn.Module) -> None:
    """The ViT init (``model.apply(...)``): Linear weights truncated normal (std 0.02), biases zero."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def pretrained_cfg(*, paper: tuple[str, str], origin_url: str, first_conv: str, load: str, size: int = 224,
                   reduction: int = 32, crop_pct: float = 0.875, interpolation: str = "bicubic",
                   license: str = "apache-2.0", classifier: str = "head.fc", **extra) -> dict:
    """The timm pretrained cfg of a visionzoo model whose weights are not hosted.

    Args:
        paper: ``(paper name, paper id)``.
        load: what loads with ``create_model(name, checkpoint_path=...)`` (e.g. "the official checkpoint").
        size: square input size; ``reduction``: the last stage's stride (pool size ``ceil(size / reduction)``:
            the stages pad odd maps).
        extra: any other timm pretrained-cfg field (``crop_mode``, ``notes`` replaces the default note).
    """
    notes = (f"Weights are not hosted by visionzoo; load {load} with create_model(name, checkpoint_path=...).",)
    return dict(dict(
        num_classes=1000, input_size=(3, size, size), pool_size=(-(-size // reduction),) * 2, crop_pct=crop_pct,
        interpolation=interpolation, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv=first_conv,
        classifier=classifier, license=license, paper_name=paper[0], paper_ids=paper[1], origin_url=origin_url,
        notes=notes), **extra)


class BackboneFeatures(FeatureGetterNet):
    """``features_only=True`` wrapper: timm's getter (``forward_intermediates`` + pruning) that also
    forwards ``set_grad_checkpointing``, which detection/segmentation stacks call on backbones.

    ``return_dict=True`` (what ``feature_cls="dict"`` selects) returns an ``OrderedDict`` keyed like timm's
    ``FeatureDictNet``: ``out_map[i]`` if given, else ``str(out_index)``.
    """

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor):
        features = super().forward(x)
        if not self.return_dict:
            return features
        keys = self.out_map if self.out_map is not None else self.feature_info.out_indices
        if len(keys) != len(features):
            raise ValueError(f"out_map needs one name per feature level ({len(features)}), got {self.out_map!r}")
        return OrderedDict((str(k), f) for k, f in zip(keys, features))


#: timm's ``feature_cls`` names -> :class:`BackboneFeatures` options. timm's own ``FeatureDictNet`` /
#: ``FeatureListNet`` / ``FeatureHookNet`` / ``FeatureGraphNet`` rebuild the network from its children (or
#: hook the modules ``feature_info`` names) and return the raw module outputs: here that is ``[B, H, W, C]``
#: token maps for ``nhwc_stages`` families, a ``stages.i`` that is not a top-level child (hence timm's
#: "Return layers {'stages.0', ...} are not present"), and no custom ``forward_intermediates`` (MaxViT,
#: the isotropic simple pyramid). Every name therefore maps onto the getter, the one path that returns
#: the documented NCHW taps; only the container type differs.
_FEATURE_CLS = {"getter": {}, "list": {}, "dict": {"return_dict": True}, "hook": {}, "fx": {}}


def feature_cfg(out_indices: tuple[int, ...], feature_cls=None, out_map=None) -> dict:
    """timm ``feature_cfg`` of a visionzoo model for ``features_only=True`` with timm's ``feature_cls=``."""
    if feature_cls is None or isinstance(feature_cls, type):
        cfg = {"feature_cls": feature_cls or BackboneFeatures}
    elif isinstance(feature_cls, str) and feature_cls.lower() in _FEATURE_CLS:
        cfg = {"feature_cls": BackboneFeatures, **_FEATURE_CLS[feature_cls.lower()]}
    else:
        raise ValueError(f"feature_cls must be one of {sorted(_FEATURE_CLS)} or a class, got {feature_cls!r}")
    if out_map is not None:
        cfg["out_map"] = tuple(out_map)
    return dict(out_indices=out_indices, **cfg)
