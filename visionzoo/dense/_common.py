"""What every framework adapter shares: the feature model, its default levels, frozen stages and BN.

No framework is imported here; each adapter module imports its own framework and builds on these.
"""

from __future__ import annotations

from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d, SyncBatchNormAct
from torch import nn

from .. import convert
from .._factory import create_model
from ..models._registry import FAMILIES, MODELS

__all__ = ["DEFAULT_STRIDES", "create_features", "default_out_indices", "freeze_stages", "frozen_bn", "is_isotropic"]

#: the strides detection and segmentation necks expect (P2..P5)
DEFAULT_STRIDES = (4, 8, 16, 32)


def is_isotropic(name: str) -> bool:
    """True for the single-scale families (every stage at one stride), which need the simple pyramid."""
    plain = name.split(".")[0].removeprefix("vz_")
    return plain in MODELS and MODELS[plain].family in ("nat_isotropic", "agent_deit")


def default_out_indices(feature_info, strides=DEFAULT_STRIDES) -> tuple[int, ...]:
    """The last feature level at each of ``strides`` that the model has (timm ``feature_info`` list)."""
    by_stride = {f["reduction"]: i for i, f in enumerate(feature_info)}  # the last level of each stride wins
    picked = tuple(by_stride[s] for s in strides if s in by_stride)
    if not picked:
        raise ValueError(
            f"no feature level at strides {tuple(strides)}; the model has "
            f"{[f['reduction'] for f in feature_info]} (pass out_indices=)"
        )
    return picked


def _with_pyramid(name: str, kwargs: dict) -> dict:
    return {"feature_pyramid": "simple", **kwargs} if is_isotropic(name) else kwargs


def level_indices(name: str, strides=DEFAULT_STRIDES, **kwargs) -> tuple[int, ...]:
    """Indices of ``name``'s feature levels at ``strides`` (:func:`default_out_indices` of the model)."""
    return default_out_indices(create_model(name, device="meta", **_with_pyramid(name, kwargs)).feature_info, strides)


def create_features(name: str, out_indices=None, checkpoint_path=None, strides=DEFAULT_STRIDES, **kwargs):
    """``create_model(name, features_only=True, ...)`` with the levels at ``strides`` by default.

    The isotropic families get the ViTDet simple pyramid (``feature_pyramid="simple"``) unless
    ``feature_pyramid=`` is given. ``kwargs`` go to the model (architecture overrides, ``drop_path_rate``...).
    """
    if out_indices is None:  # the probe builds on the meta device: no weights to load there
        out_indices = level_indices(name, strides, **{k: v for k, v in kwargs.items() if k != "pretrained"})
    kwargs = _with_pyramid(name, kwargs)
    return create_model(name, features_only=True, out_indices=out_indices, checkpoint_path=checkpoint_path, **kwargs)


def frozen_bn(module: nn.Module, frozen_cls=None) -> nn.Module:
    """Every ``BatchNorm2d`` / ``SyncBatchNorm`` of ``module`` as ``frozen_cls(num_features)`` (torchvision's
    ``FrozenBatchNorm2d`` by default) with the same statistics, affine and ``eps``; timm ``BatchNormAct2d``
    becomes ``FrozenBatchNormAct2d`` (keeping its activation). Returns ``module`` (or its replacement)."""
    if frozen_cls is None:
        from torchvision.ops.misc import FrozenBatchNorm2d as frozen_cls
    if isinstance(module, (BatchNormAct2d, SyncBatchNormAct)):
        new = FrozenBatchNormAct2d(module.num_features, eps=module.eps, apply_act=False)
        new.act, new.drop = module.act, module.drop
    elif isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        new = frozen_cls(module.num_features)
        new.eps = module.eps
    else:
        for name, child in module.named_children():
            replaced = frozen_bn(child, frozen_cls)
            if replaced is not child:
                setattr(module, name, replaced)
        return module
    if module.affine:
        new.weight.copy_(module.weight.detach())
        new.bias.copy_(module.bias.detach())
    new.running_mean.copy_(module.running_mean)
    new.running_var.copy_(module.running_var)
    return new.to(module.running_mean.device)


def _trunk(features: nn.Module) -> nn.Module:
    return getattr(features, "model", features)


def freeze_stages(features: nn.Module, frozen: int) -> list[str]:
    """Stop gradients into the stem and the first ``frozen - 1`` stages (detectron2's ``freeze_at``
    meaning: 0 freezes nothing, 1 the stem, 2 the stem and stage 0...). Returns the frozen prefixes."""
    trunk = _trunk(features)
    n = len(trunk.stages)
    if not 0 <= frozen <= n + 1:
        raise ValueError(f"frozen stages must be in [0, {n + 1}] (stem + {n} stages), got {frozen}")
    names = (["stem"] if frozen >= 1 else []) + [f"stages.{i}" for i in range(frozen - 1)]
    for prefix in names:
        for p in trunk.get_submodule(prefix).parameters():
            p.requires_grad_(False)
    return names


def load_trunk_weights(features: nn.Module, name: str, state_dict: dict, **model_kwargs) -> None:
    """Load a classifier checkpoint (visionzoo, official or timm layout) into a feature model's trunk, strictly:
    the family converter must match the whole classifier (else ``CheckpointError`` names what is missing), and
    every trunk tensor must come from it (the head and pruned layers are dropped). Parameters the classifier
    has no counterpart for (the isotropic simple pyramid) keep their initialisation."""
    plain = name.split(".")[0].removeprefix("vz_")
    if plain not in MODELS:
        raise ValueError(f"unknown visionzoo model {name!r}")
    full = create_model(plain, device="meta", **_with_pyramid(plain, model_kwargs))
    converted = FAMILIES[MODELS[plain].family].filter_fn(convert.unwrap_state_dict(state_dict), full)
    trunk = _trunk(features)
    own = trunk.state_dict()
    missing = [k for k in own if k not in converted]
    if missing:
        raise convert.CheckpointError(f"checkpoint lacks {len(missing)} trunk tensors of {name} (e.g. {missing[:3]})")
    trunk.load_state_dict({k: own[k] if converted[k].is_meta else converted[k] for k in own}, strict=True)
