"""MMDetection / MMSegmentation backbone: ``VisionzooBackbone`` in mmdet's and mmseg's ``MODELS`` registries.

In a config (OpenMMLab 2.x)::

    custom_imports = dict(imports=["visionzoo.dense.mm"], allow_failed_imports=False)
    model = dict(
        backbone=dict(type="VisionzooBackbone", model_name="eca_resnet50", out_indices=(0, 1, 2, 3),
                      frozen_stages=1, norm_eval=True, with_cp=False,
                      init_cfg=dict(type="Pretrained", checkpoint="eca_resnet50_k3557.pth.tar")),
        neck=dict(type="FPN", in_channels=[256, 512, 1024, 2048], ...))

``out_indices`` / ``frozen_stages`` keep the meaning of mmdet's ``ResNet``: indices into the stride 4, 8, 16, 32
levels (a visionzoo ResNet's stride-2 stem level is not one of them), ``frozen_stages=-1`` trains everything,
``0`` freezes the stem, ``k`` the stem and the first ``k`` stages. ``init_cfg=dict(type="Pretrained", checkpoint=...,
prefix=...)`` loads a classifier checkpoint strictly through visionzoo's converters (mmengine's own
``PretrainedInit`` loads non-strictly and would load nothing from an official checkpoint's keys).
"""

from __future__ import annotations

import torch
from mmengine.model import BaseModule
from mmengine.runner.checkpoint import CheckpointLoader
from torch import nn

from .. import convert
from ._common import create_features, freeze_stages, level_indices, load_trunk_weights

__all__ = ["VisionzooBackbone"]


class VisionzooBackbone(BaseModule):
    """A visionzoo feature model with the mmdet/mmseg backbone interface (returns a tuple of NCHW maps).

    Args:
        model_name: registered visionzoo model.
        out_indices: indices into the model's stride 4-32 levels (mmdet's ``ResNet`` meaning).
        frozen_stages: -1 none, 0 the stem, ``k`` the stem and the first ``k`` stages (no gradient, eval mode).
        norm_eval: keep every BatchNorm in eval mode while training (frozen statistics), as mmdet's ResNet.
        with_cp: gradient checkpointing of the trunk (``set_grad_checkpointing``).
        init_cfg: ``dict(type="Pretrained", checkpoint=..., prefix=None)`` loads classifier weights strictly; other
            init configs go to mmengine.
        model_kwargs: model arguments (``drop_path_rate``, architecture overrides, ``feature_pyramid``...).
    """

    def __init__(
        self,
        model_name: str,
        out_indices=(0, 1, 2, 3),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        with_cp: bool = False,
        init_cfg: dict | None = None,
        **model_kwargs,
    ):
        super().__init__(init_cfg=init_cfg)
        levels = level_indices(model_name, **model_kwargs)  # the levels at strides 4-32
        out_indices = tuple(out_indices)
        if not out_indices or any(not -len(levels) <= i < len(levels) for i in out_indices):
            raise ValueError(f"out_indices must index the {len(levels)} levels at strides 4-32, got {out_indices}")
        self.model_name, self.model_kwargs = model_name, dict(model_kwargs)
        self.body = create_features(model_name, out_indices=tuple(levels[i] for i in out_indices), **model_kwargs)
        n = len(self.body.model.stages)
        if not -1 <= frozen_stages <= n:
            raise ValueError(f"frozen_stages must be in [-1, {n}], got {frozen_stages}")
        self.frozen = freeze_stages(self.body, frozen_stages + 1)
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.body.set_grad_checkpointing(with_cp)
        self.out_channels = self.body.feature_info.channels()

    def init_weights(self) -> None:
        cfg = self.init_cfg
        if not (isinstance(cfg, dict) and cfg.get("type") == "Pretrained"):
            super().init_weights()
            return
        state_dict = convert.unwrap_state_dict(CheckpointLoader.load_checkpoint(cfg["checkpoint"], map_location="cpu"))
        prefix = cfg.get("prefix")
        if prefix:
            prefix = prefix if prefix.endswith(".") else prefix + "."
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            if not state_dict:
                raise convert.CheckpointError(f"no key of {cfg['checkpoint']} starts with prefix {prefix!r}")
        load_trunk_weights(self.body, self.model_name, state_dict, **self.model_kwargs)
        self._is_init = True

    def train(self, mode: bool = True) -> VisionzooBackbone:
        super().train(mode)
        trunk = self.body.model
        for prefix in self.frozen:
            trunk.get_submodule(prefix).eval()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.body(x))


def _register() -> list[str]:
    """Register into every installed OpenMMLab detection / segmentation registry."""
    done = []
    for package in ("mmdet", "mmseg"):
        try:
            registry = __import__(f"{package}.registry", fromlist=["MODELS"]).MODELS
        except ImportError:
            continue
        registry.register_module(name="VisionzooBackbone", module=VisionzooBackbone, force=True)
        done.append(package)
    if not done:
        raise ImportError("visionzoo.dense.mm needs mmdet or mmsegmentation (with mmengine and mmcv)")
    return done


REGISTERED = _register()
