"""``create_model("local-dir:PATH")``: an export written by :func:`visionzoo.hub.save_pretrained`.

The export is checked before timm reads it, so a missing, corrupt or truncated file is reported with
its path (timm would raise a bare ``JSONDecodeError`` / ``SafetensorError``). A ``features_only`` export
(its ``config.json`` records ``model_args.features_only``) holds the feature model's own weights (later
stages and the classifier pruned): it is rebuilt as that feature model, then loaded strictly.
"""
from __future__ import annotations

import json
import os

import timm
import torch

from .convert import CheckpointError

__all__ = ["WEIGHT_FILES", "create_local", "read_config"]

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_config(path: str) -> dict:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"local-dir:{path}: no config.json at {cfg_path!r} "
                                "(export a model with visionzoo.hub.save_pretrained)")
    try:
        with open(cfg_path) as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"local-dir:{path}: config.json {cfg_path!r} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or "architecture" not in config:
        raise CheckpointError(f"local-dir:{path}: config.json {cfg_path!r} has no 'architecture' (not a timm / "
                              "visionzoo export)")
    return config


def _weights(path: str) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            break
    else:
        raise FileNotFoundError(f"local-dir:{path}: no weights file ({' or '.join(WEIGHT_FILES)}) in {path!r}")
    try:
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(file, device="cpu")
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is a damaged file; say which
        from .convert import describe_load_error
        raise CheckpointError(f"local-dir:{path}: weights file {file!r} cannot be read "
                              f"({describe_load_error(e)}); re-export it") from None


def create_local(name: str, **kwargs) -> torch.nn.Module:
    """Build ``local-dir:PATH`` with its weights (``pretrained`` is implied: the export is the weights)."""
    path = name[len("local-dir:"):]
    config = read_config(path)
    state_dict = _weights(path)  # read (and so checked) before timm reads it again
    if (config.get("model_args") or {}).get("features_only"):
        model = timm.create_model(name, pretrained=False, **kwargs)
        model.load_state_dict({"model." + k: v for k, v in state_dict.items()}, strict=True)
        return model
    return timm.create_model(name, pretrained=True, **kwargs)
