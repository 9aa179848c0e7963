"""detectron2 backbones: a visionzoo model as a ``detectron2.modeling.Backbone`` (``res2`` ... ``res5``).

yacs configs (importing this module registers the three builders in ``BACKBONE_REGISTRY``)::

    from detectron2.config import get_cfg
    from visionzoo.dense.detectron2 import add_visionzoo_config

    cfg = get_cfg()
    add_visionzoo_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_visionzoo_fpn_backbone"  # or build_visionzoo_backbone /
    cfg.MODEL.VISIONZOO.NAME = "dinat_tiny"                     #    build_retinanet_visionzoo_fpn_backbone
    cfg.MODEL.VISIONZOO.WEIGHTS = "dinat_tiny_in1k.pth"         # classifier checkpoint, loaded strictly
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]

LazyConfig: ``L(VisionzooBackbone)(name="dinat_tiny", out_features=["res2", "res3", "res4", "res5"], weights=...)``
as ``model.backbone.bottom_up``. ``DetectionCheckpointer`` cannot load a classifier checkpoint into this module
(its keys are the classifier's): pass it as ``weights`` (``MODEL.VISIONZOO.WEIGHTS``), which our converters load
strictly (official, timm or visionzoo layout), and keep ``MODEL.WEIGHTS`` for detector checkpoints.
"""

from __future__ import annotations

import math

import torch
from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from ._common import create_features, freeze_stages, frozen_bn

__all__ = [
    "VisionzooBackbone",
    "add_visionzoo_config",
    "build_retinanet_visionzoo_fpn_backbone",
    "build_visionzoo_backbone",
    "build_visionzoo_fpn_backbone",
]

_NORMS = ("FrozenBN", "BN")


def _res_name(stride: int) -> str:
    return f"res{int(math.log2(stride))}"


class VisionzooBackbone(Backbone):
    """A visionzoo feature model with detectron2's ``Backbone`` interface.

    Args:
        name: registered visionzoo model.
        out_features: subset of ``res2`` ... ``res5`` (the levels at strides 4, 8, 16, 32).
        freeze_at: detectron2's meaning: 0 trains everything, 1 freezes the stem, ``k`` the stem and the first
            ``k - 1`` stages (their BatchNorms become ``FrozenBatchNorm2d``).
        norm: ``"FrozenBN"`` (every BatchNorm frozen, detectron2's ResNet default) or ``"BN"``.
        weights: classifier checkpoint (official, timm or visionzoo layout), loaded strictly.
        size_divisibility: input padding multiple (32: the coarsest level's stride).
        model_kwargs: model arguments (``drop_path_rate``, architecture overrides, ``feature_pyramid``...).
    """

    def __init__(
        self,
        name: str,
        out_features=("res2", "res3", "res4", "res5"),
        freeze_at: int = 0,
        norm: str = "FrozenBN",
        weights: str | None = None,
        size_divisibility: int = 32,
        **model_kwargs,
    ):
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        body = create_features(name, checkpoint_path=weights or None, **model_kwargs)
        names = [_res_name(s) for s in body.feature_info.reduction()]
        unknown = sorted(set(out_features) - set(names))
        if unknown or not out_features:
            raise ValueError(f"out_features must be a non-empty subset of {names} for {name}, got {list(out_features)}")
        self.body = body
        self._names = names
        self._out_features = [n for n in names if n in out_features]
        self._out_feature_channels = dict(zip(names, body.feature_info.channels()))
        self._out_feature_strides = dict(zip(names, body.feature_info.reduction()))
        self._size_divisibility = size_divisibility
        if norm == "FrozenBN":
            frozen_bn(self.body, FrozenBatchNorm2d)
        trunk = self.body.model
        for prefix in freeze_stages(self.body, freeze_at):
            frozen_bn(trunk.get_submodule(prefix), FrozenBatchNorm2d)

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"size_divisiblity": self._size_divisibility, "square_size": 0}  # (detectron2's spelling)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
            for n in self._out_features
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = dict(zip(self._names, self.body(x)))
        return {n: feats[n] for n in self._out_features}


def add_visionzoo_config(cfg: CfgNode) -> CfgNode:
    """Add ``MODEL.VISIONZOO`` (NAME, WEIGHTS, OUT_FEATURES, NORM, DROP_PATH_RATE, SIZE_DIVISIBILITY, KWARGS) to
    ``cfg``; ``MODEL.BACKBONE.FREEZE_AT`` keeps its detectron2 meaning."""
    cfg.MODEL.VISIONZOO = CfgNode()
    cfg.MODEL.VISIONZOO.NAME = "eca_resnet50"
    cfg.MODEL.VISIONZOO.WEIGHTS = ""
    cfg.MODEL.VISIONZOO.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.VISIONZOO.NORM = "FrozenBN"
    cfg.MODEL.VISIONZOO.DROP_PATH_RATE = 0.0
    cfg.MODEL.VISIONZOO.SIZE_DIVISIBILITY = 32
    cfg.MODEL.VISIONZOO.KWARGS = CfgNode(new_allowed=True)  # other model arguments (architecture overrides...)
    return cfg


def _from_cfg(cfg: CfgNode) -> VisionzooBackbone:
    vz = cfg.MODEL.VISIONZOO
    kwargs = {k.lower(): tuple(v) if isinstance(v, list) else v for k, v in dict(vz.KWARGS).items()}
    if vz.DROP_PATH_RATE:
        kwargs["drop_path_rate"] = vz.DROP_PATH_RATE
    return VisionzooBackbone(
        vz.NAME,
        vz.OUT_FEATURES,
        cfg.MODEL.BACKBONE.FREEZE_AT,
        vz.NORM,
        vz.WEIGHTS or None,
        vz.SIZE_DIVISIBILITY,
        **kwargs,
    )


@BACKBONE_REGISTRY.register()
def build_visionzoo_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> VisionzooBackbone:
    """The visionzoo model alone (``res2``...``res5``), e.g. for a C4-style head on ``res4``."""
    return _from_cfg(cfg)


@BACKBONE_REGISTRY.register()
def build_visionzoo_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """FPN over ``MODEL.FPN.IN_FEATURES`` with the max-pooled ``p6`` (Faster / Mask R-CNN)."""
    return FPN(
        bottom_up=_from_cfg(cfg),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_retinanet_visionzoo_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """FPN with ``p6`` / ``p7`` from the last input level (``LastLevelP6P7``), as detectron2's RetinaNet."""
    bottom_up = _from_cfg(cfg)
    last = cfg.MODEL.FPN.IN_FEATURES[-1]
    top = LastLevelP6P7(bottom_up.output_shape()[last].channels, cfg.MODEL.FPN.OUT_CHANNELS, in_feature=last)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
