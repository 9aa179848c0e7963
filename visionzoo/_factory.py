"""``create_model`` and the registry queries of the public API."""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os

import timm
import torch

from . import convert
from ._local_dir import create_local
from .models import _pretrained_sources, _registry
from .models._classifier_weights import adapt_state_dict, checkpoint_num_classes
from .models._registry import FAMILIES, MODELS, PREFIX

__all__ = ["UnknownModelError", "create_model", "list_models", "list_families", "list_official_families",
           "model_info", "count_params"]

_SOURCES = ("local-dir:", "hf-hub:", "hf_hub:")


class UnknownModelError(ValueError):
    """The model name is not registered; the message lists the closest names."""


def _split(name: str) -> tuple[str, str | None]:
    if not isinstance(name, str) or not name:
        raise TypeError(f"model name must be a non-empty string, got {name!r}")
    arch, _, tag = name.partition(".")
    plain = arch[len(PREFIX):] if arch.startswith(PREFIX) else arch
    if plain not in MODELS:
        lower = plain.lower()  # names are lower-case: 'ECA_ResNet18' is a typo of 'eca_resnet18', not a new name
        close = [lower] if lower in MODELS else difflib.get_close_matches(lower, list(MODELS), n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else "; see visionzoo.list_models()"
        raise UnknownModelError(f"unknown model {name!r}{hint}")
    if tag and tag not in MODELS[plain].tags:
        raise UnknownModelError(f"unknown tag {tag!r} for {plain!r}; known: {', '.join(MODELS[plain].tags)}")
    return plain, tag or None


def create_model(name: str, pretrained: bool = False, checkpoint_path: str | os.PathLike | None = None,
                 features_only: bool = False, out_indices=None, **kwargs):
    """Build a visionzoo model.

    Args:
        name: a registered name (``"eca_resnet50"``, optionally ``.tag`` or the ``vz_`` prefix), or a
            ``local-dir:/path`` / ``hf-hub:org/repo`` export (``config.json`` + weights).
        pretrained: download the released weights of the tag (default: the model's first tag; see
            ``model_info(name)["tags"]``) through timm's loader / huggingface_hub and convert them. Weights
            only on a cloud share raise with the link and the ``checkpoint_path=`` call.
        checkpoint_path: a visionzoo, official-repository or timm checkpoint (``.pth``, ``.pt``,
            ``.bin``, ``.safetensors``; wrapped in ``model``/``state_dict``/``module.`` or not). The
            family converter detects the layout. Loaded before any feature wrapping; the class count
            follows the checkpoint unless ``num_classes`` is given (then the classifier is re-initialised).
        features_only, out_indices: return a feature extractor (NCHW maps of the selected stages).
        **kwargs: model arguments (``num_classes``, ``in_chans``, ``drop_path_rate``, ``device``,
            ``dtype``...) or architecture overrides (fields of the family's config dataclass).
    """
    if features_only:
        kwargs["features_only"] = True
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices) if not isinstance(out_indices, int) else out_indices
    elif out_indices is not None:
        raise ValueError("out_indices is only meaningful with features_only=True")
    if isinstance(name, str) and name.startswith(_SOURCES):
        if checkpoint_path is not None:
            raise ValueError(f"checkpoint_path cannot be combined with a {name.split(':')[0]}: source")
        if name.startswith("local-dir:"):
            return create_local(name, **kwargs)
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    plain, tag = _split(name)
    arch = PREFIX + plain + (f".{tag}" if tag else "")
    if checkpoint_path is not None:
        if pretrained:
            raise ValueError("pass either pretrained=True or checkpoint_path, not both")
        state_dict = convert.load_checkpoint_file(checkpoint_path)
        if features_only or kwargs.get("num_classes") == 0:
            # a backbone without the classifier (or the later stages): convert against the full architecture,
            # then keep the keys this model has
            model = timm.create_model(arch, **kwargs)
            model.load_state_dict(adapt_state_dict(model, state_dict), strict=True)
            return model
        overlay = dict(state_dict=state_dict)
        ckpt_classes = checkpoint_num_classes(state_dict)
        if ckpt_classes is not None:
            overlay["num_classes"] = ckpt_classes
            kwargs.setdefault("num_classes", ckpt_classes)
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    if pretrained and (why := _pretrained_sources.unavailable_message(plain, tag)):
        raise RuntimeError(why)
    return timm.create_model(arch, pretrained=pretrained, **kwargs)


def list_models(pattern: str | None = None, family: str | None = None) -> list[str]:
    """Registered plain names (no ``vz_`` prefix), sorted; ``pattern`` is an fnmatch wildcard."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {sorted(FAMILIES)}")
    names = [n for n, e in MODELS.items() if family is None or e.family == family]
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return sorted(names)


def list_families() -> list[str]:
    """visionzoo family modules (``ca_resnet``, ``eca_mobilenetv2``, ...)."""
    return sorted(FAMILIES)


def list_official_families() -> list[str]:
    """Official family names :func:`visionzoo.convert.from_official` accepts."""
    return sorted(name for fam in FAMILIES.values() for name in fam.official)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_info(name: str) -> dict:
    """Facts about a registered model: family, architecture config, parameter count (built on the
    meta device, so it is cheap), the official count and top-1 it must match, data config."""
    plain, _ = _split(name)
    entry = MODELS[plain]
    model = _registry.build(plain, device="meta")
    cfg = entry.pretrained_cfg
    return dict(
        name=plain, architecture=PREFIX + plain, tag=entry.tag, tags=list(entry.tags), family=entry.family,
        config=dataclasses.asdict(entry.cfg), params=count_params(model), **entry.meta,
        input_size=cfg["input_size"], crop_pct=cfg.get("crop_pct"), interpolation=cfg.get("interpolation"),
        mean=cfg.get("mean"), std=cfg.get("std"), paper=cfg.get("paper_name"), paper_ids=cfg.get("paper_ids"),
        origin_url=cfg.get("origin_url"), num_features=model.num_features,
        feature_info=[dict(num_chs=f["num_chs"], reduction=f["reduction"]) for f in model.feature_info],
    )
