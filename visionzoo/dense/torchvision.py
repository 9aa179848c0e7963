"""torchvision detection backbones: a visionzoo feature model under ``torchvision.ops.FeaturePyramidNetwork``.

    from torchvision.models.detection import FasterRCNN
    from visionzoo.dense.torchvision import backbone_with_fpn, anchors_and_roi_align

    backbone = backbone_with_fpn("dinat_mini", trainable_stages=3)
    anchors, roi_align = anchors_and_roi_align(backbone)
    model = FasterRCNN(backbone, num_classes=91, rpn_anchor_generator=anchors, box_roi_pool=roi_align)

torchvision's own ``BackboneWithFPN`` wraps models through ``IntermediateLayerGetter`` (named children,
tensor outputs), which sees only a visionzoo feature model's last output; this module is the adapter.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from ._common import DEFAULT_STRIDES, create_features, freeze_stages, frozen_bn

__all__ = ["VisionzooFPN", "anchors_and_roi_align", "backbone_with_fpn"]

_EXTRA = ("pool", "p6p7", None)


class VisionzooFPN(nn.Module):
    """``body`` (a visionzoo ``features_only`` model) then ``fpn``; ``forward`` returns an ``OrderedDict``
    ``{"0": P_first, ..., "pool"/"p6"/"p7": extra levels}`` of ``out_channels`` maps, as torchvision's
    detection models expect. ``strides`` gives each output's stride, in order."""

    def __init__(self, body: nn.Module, fpn: FeaturePyramidNetwork, out_channels: int, strides: list[int]):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = out_channels
        self.strides = list(strides)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def _extra_block(extra_blocks, out_channels: int) -> ExtraFPNBlock | None:
    if extra_blocks is None or isinstance(extra_blocks, ExtraFPNBlock):
        return extra_blocks
    if extra_blocks == "pool":
        return LastLevelMaxPool()
    if extra_blocks == "p6p7":  # RetinaNet / FCOS: P6 from P5 (the FPN output), P7 from P6
        return LastLevelP6P7(out_channels, out_channels)
    raise ValueError(f"extra_blocks must be one of {_EXTRA} or an ExtraFPNBlock, got {extra_blocks!r}")


def _extra_names(block: ExtraFPNBlock | None) -> list[str]:
    if block is None:
        return []
    return ["p6", "p7"] if isinstance(block, LastLevelP6P7) else ["pool"]


def backbone_with_fpn(
    name: str,
    out_indices=None,
    out_channels: int = 256,
    extra_blocks="pool",
    trainable_stages: int | None = None,
    norm_layer=FrozenBatchNorm2d,
    strides=DEFAULT_STRIDES,
    checkpoint_path: str | os.PathLike | None = None,
    **model_kwargs,
) -> VisionzooFPN:
    """A visionzoo model as a torchvision detection backbone with an FPN.

    Args:
        name: a registered visionzoo model (``"eca_resnet50"``, ``"dinat_tiny"``...).
        out_indices: feature levels into the FPN; ``None`` takes the levels at ``strides``.
        strides: the levels wanted when ``out_indices`` is None: 4, 8, 16, 32 (Faster / Mask R-CNN), or 8, 16, 32
            for RetinaNet / FCOS (for the isotropic families: levels of the simple feature pyramid).
        out_channels: FPN width (``.out_channels`` of the result).
        extra_blocks: ``"pool"`` (Faster/Mask R-CNN: max-pooled P6), ``"p6p7"`` (RetinaNet / FCOS, with
            ``strides=(8, 16, 32)``), ``None`` or a torchvision ``ExtraFPNBlock``.
        trainable_stages: ``None`` trains every parameter; ``k`` trains only the last ``k`` stages (the stem
            and the earlier stages get no gradient; the FPN always trains).
        norm_layer: class replacing every ``BatchNorm2d`` (torchvision's ``FrozenBatchNorm2d`` by default, as
            torchvision's detection ResNets); ``None`` keeps trainable BN.
        checkpoint_path: classifier weights (visionzoo, official or timm layout) loaded into the trunk.
        model_kwargs: model arguments (``drop_path_rate``, architecture overrides, ``feature_pyramid``...).
    """
    body = create_features(name, out_indices, checkpoint_path, strides, **model_kwargs)
    if norm_layer is not None:
        body = frozen_bn(body, norm_layer)
    if trainable_stages is not None:
        n = len(body.model.stages)
        if not 0 <= trainable_stages <= n:
            raise ValueError(f"trainable_stages must be None or in [0, {n}] for {name}, got {trainable_stages}")
        freeze_stages(body, n + 1 - trainable_stages)
    extra = _extra_block(extra_blocks, out_channels)
    fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=extra)
    levels = body.feature_info.reduction()
    levels += [levels[-1] * 2 ** (i + 1) for i in range(len(_extra_names(extra)))]
    return VisionzooFPN(body, fpn, out_channels, levels)


def anchors_and_roi_align(
    backbone: VisionzooFPN,
    scales_per_octave: int = 1,
    aspect_ratios=(0.5, 1.0, 2.0),
    roi_output_size: int = 7,
    sampling_ratio: int = 2,
):
    """The ``AnchorGenerator`` and box ``MultiScaleRoIAlign`` matching ``backbone``'s levels.

    Anchors are ``8 x stride`` per level (32 at stride 4, as torchvision's ResNet-FPN models), with
    ``scales_per_octave`` sizes each (RetinaNet: 3); RoIAlign pools the FPN levels only (not the extra
    ``pool`` / ``p6`` / ``p7``). For Mask R-CNN's mask head build a second one with ``roi_output_size=14``.
    """
    if scales_per_octave < 1:
        raise ValueError(f"scales_per_octave must be >= 1, got {scales_per_octave}")
    sizes = tuple(
        tuple(int(8 * s * 2 ** (k / scales_per_octave)) for k in range(scales_per_octave)) for s in backbone.strides
    )
    anchors = AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))
    names = [str(i) for i in range(len(backbone.body.feature_info.channels()))]
    return anchors, MultiScaleRoIAlign(names, roi_output_size, sampling_ratio)
