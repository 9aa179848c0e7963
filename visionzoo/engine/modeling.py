"""Building the model a CLI names: visionzoo names, timm names, ``local-dir:`` / ``hf-hub:`` exports,
with weights from ``--pretrained``, a foreign checkpoint, or a visionzoo training checkpoint."""
from __future__ import annotations

import logging

import timm
import torch

from .. import UnknownModelError
from .. import create_model as vz_create_model
from .._factory import _split
from ..convert import CheckpointError
from .checkpoint import is_training_checkpoint, load_checkpoint
from .errors import UsageError

__all__ = ["is_visionzoo_name", "create", "build_model"]

_logger = logging.getLogger(__name__)


def is_visionzoo_name(name: str) -> bool:
    try:
        _split(name)
        return True
    except (UnknownModelError, TypeError):
        return False


def _canonical(name: str) -> str:
    try:
        return _split(name)[0]
    except (UnknownModelError, TypeError):
        return name


def create(name: str, pretrained: bool = False, checkpoint_path: str | None = None, **kwargs) -> torch.nn.Module:
    """``create_model`` through visionzoo (its names and sources) or timm (its own names); None-valued
    kwargs are dropped. Bad names, arguments or weights raise :class:`UsageError` with the reason."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        if name.startswith(("local-dir:", "hf-hub:", "hf_hub:")) or is_visionzoo_name(name) or not timm.is_model(name):
            return vz_create_model(name, pretrained=pretrained, checkpoint_path=checkpoint_path, **kwargs)
        return timm.create_model(name, pretrained=pretrained, checkpoint_path=checkpoint_path or "", **kwargs)
    except (UnknownModelError, CheckpointError, FileNotFoundError) as e:
        raise UsageError(str(e).splitlines()[0]) from None
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:
        raise UsageError(f"cannot build model {name!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def build_model(name: str | None, *, checkpoint: str | None = None, pretrained: bool = False, use_ema: bool = False,
                num_classes: int | None = None, model_kwargs: dict | None = None, **kwargs):
    """The model and, for visionzoo training checkpoints, the checkpoint dict (else None).

    A training checkpoint (``last.pth.tar`` ...) rebuilds its own architecture: its ``arch`` and
    ``--model-kwargs`` are the defaults, its class count is restored, weights load strictly (the EMA
    weights with ``use_ema``), then the classifier is replaced when ``num_classes`` differs
    (fine-tuning). Any other checkpoint goes through ``create_model(checkpoint_path=...)``, whose
    converters read official and timm layouts.
    """
    model_kwargs = dict(model_kwargs or {})
    ckpt = None
    if checkpoint:
        try:
            ckpt = load_checkpoint(checkpoint)
        except (CheckpointError, FileNotFoundError) as e:
            raise UsageError(str(e)) from None
        if not is_training_checkpoint(ckpt):
            ckpt = None
    if ckpt is None:
        if name is None:
            raise UsageError(f"{checkpoint!r} is not a visionzoo training checkpoint: pass --model too")
        if use_ema and checkpoint:
            _logger.info("note: create_model prefers state_dict_ema when the checkpoint has one")
        model = create(name, pretrained=pretrained, checkpoint_path=checkpoint or None, num_classes=num_classes,
                       **model_kwargs, **kwargs)
        return model, None
    arch = name or ckpt["arch"]
    recorded_kwargs = dict(ckpt.get("model_kwargs") or {})
    if name and _canonical(name) != _canonical(ckpt["arch"]):
        # timm's validate.py loads the checkpoint into --model; the run's --model-kwargs were arguments of
        # its own architecture, so they are not carried over to another one
        _logger.warning("--model %s differs from the checkpoint's architecture %s%s", name, ckpt["arch"],
                        f"; its --model-kwargs {recorded_kwargs} are not applied" if recorded_kwargs else "")
        recorded_kwargs = {}
    kw = {**dict(ckpt.get("model_args") or {}), **recorded_kwargs, **model_kwargs,
          **{k: v for k, v in kwargs.items() if v is not None}}
    model = create(arch, num_classes=ckpt["num_classes"], **kw)
    key = "state_dict_ema" if use_ema else "state_dict"
    if ckpt.get(key) is None:
        raise UsageError(f"checkpoint {checkpoint!r} has no {key} (trained without --model-ema?)")
    try:
        model.load_state_dict(ckpt[key], strict=True)
    except RuntimeError as e:
        hint = (f"it was trained as {ckpt['arch']!r}: drop --model to evaluate it as trained"
                if arch != ckpt["arch"] else "same --model-kwargs as in training?")
        raise UsageError(f"checkpoint {checkpoint!r} does not fit --model {arch!r} ({hint}): "
                         f"{str(e).splitlines()[0]}") from None
    if num_classes is not None and num_classes != ckpt["num_classes"]:
        _logger.info("new %d-class classifier (the checkpoint has %d classes)", num_classes, ckpt["num_classes"])
        model.reset_classifier(num_classes)
    return model, ckpt
