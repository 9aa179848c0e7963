"""Classifier checkpoints into headless and ``features_only`` models.

The usual backbone calls, ``create_model(name, checkpoint_path=..., num_classes=0)`` and
``create_model(name, features_only=True, checkpoint_path=...)`` (also through ``timm.create_model``,
which loads *after* wrapping the model, and so through transformers' ``TimmBackbone`` and mmpretrain's
``TIMMBackbone``), hand a classifier's state dict to a model without its classifier (and, for feature
models, without the stages after the last tap). :func:`adapt_state_dict` converts the checkpoint with
the family's converter against a reference classifier of the same architecture built on the meta device
(so a foreign or truncated checkpoint still fails with the converter's report), then keeps the keys the
model has: the classifier (and pruned stages / final norm) are dropped, nothing else is; modules only the
model has (a simple feature pyramid) keep their initial values, as the family converters leave them.

Every registered model carries :func:`install`'s ``load_state_dict`` pre-hook, so ``load_state_dict``
(timm's ``load_checkpoint`` included) does this by itself; a state dict that already fits is untouched.
"""
from __future__ import annotations

import torch
from torch import nn

from ..convert import CheckpointError, unwrap_state_dict

__all__ = ["adapt_state_dict", "checkpoint_num_classes", "install"]

_HEAD_KEYS = ("head.fc.weight", "fc.weight", "last_linear.weight", "classifier.1.weight", "head.weight",
              "head.l.weight", "classifier.weight")  # the last: transformers checkpoints


def checkpoint_num_classes(state_dict: dict) -> int | None:
    """Classifier width of a checkpoint, whatever its layout (the first of the known classifier names)."""
    for key in _HEAD_KEYS:
        w = state_dict.get(key)
        if isinstance(w, torch.Tensor) and w.ndim in (2, 4):
            return int(w.shape[0])
    return None


def _inner(model: nn.Module) -> tuple[nn.Module, str]:
    """The backbone and the key prefix it has inside ``model`` (``model.`` in a feature wrapper)."""
    from ._base import BackboneFeatures
    return (model.model, "model.") if isinstance(model, BackboneFeatures) else (model, "")


def adapt_state_dict(model: nn.Module, state_dict: dict) -> dict:
    """``state_dict`` (a classifier checkpoint of ``model``'s architecture, any layout the family converts)
    as ``model``'s keys. Raises :class:`CheckpointError` when it is not such a checkpoint."""
    from ._registry import FAMILIES, MODELS, PREFIX
    inner, prefix = _inner(model)
    arch = str(getattr(inner, "pretrained_cfg", {}).get("architecture") or "")
    plain = arch.removeprefix(PREFIX)
    if plain not in MODELS or not hasattr(inner, "cfg"):
        raise CheckpointError(f"{type(inner).__name__} is not a registered visionzoo model: cannot convert")
    family = FAMILIES[MODELS[plain].family]
    sd = unwrap_state_dict(state_dict)
    num_classes = checkpoint_num_classes(sd) or 0
    reference = family.model_cls(inner.cfg, in_chans=inner.in_chans, num_classes=num_classes, device="meta")
    converted = family.filter_fn(sd, reference)  # raises with the layouts it tried when nothing fits
    classifier = MODELS[plain].pretrained_cfg.get("classifier") or "head.fc"
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    target = model.state_dict()
    out = {}
    for k, v in converted.items():
        key = prefix + k
        if key not in target:
            continue  # the classifier, or a stage / norm the feature model pruned
        if target[key].shape != v.shape and any(k.startswith(c + ".") for c in classifier):
            continue  # a classifier of another class count is re-initialised, as timm does
        out[key] = v
    # modules a classifier does not have (a detection pyramid built by a model option) stay as initialised
    trunk = {k.split(".", 1)[0] for k in reference.state_dict()}
    out.update({key: v for key, v in target.items()
                if key not in out and key[len(prefix):].split(".", 1)[0] not in trunk})
    return out


def _pre_hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    own = module.state_dict()
    incoming = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not incoming or set(incoming) == set(own):
        return
    try:
        adapted = adapt_state_dict(module, incoming)
    except CheckpointError:
        return  # not a checkpoint of this architecture: torch's strict load reports the keys
    for k in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[k]
    state_dict.update({prefix + k: v for k, v in adapted.items()})


def install(model: nn.Module) -> nn.Module:
    """Give a built model (or its feature wrapper) the classifier-checkpoint pre-hook."""
    model.register_load_state_dict_pre_hook(_pre_hook)
    return model
