"""Checkpoint conversion: official repositories' and timm's layouts -> visionzoo's.

* :func:`load_checkpoint_file` reads ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` and unwraps
  training containers (``state_dict_ema``, ``model_ema``, ``state_dict``, ``model``; ``module.`` and
  ``_orig_mod.`` prefixes), as timm's ``load_checkpoint`` does.
* :func:`remap` is what every family's ``checkpoint_filter_fn`` calls: native visionzoo keys pass
  through unchanged (idempotent); otherwise each of the family's converters is tried and the one that
  produces exactly the model's keys wins; if none does, the error lists what is missing/unexpected.
* :func:`from_official` builds the visionzoo model equivalent to an official constructor call; every
  family's official-call translator starts with :func:`check_official_kwargs`.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Callable, Iterable, Mapping

import torch

__all__ = ["CheckpointError", "describe_load_error", "load_checkpoint_file", "unwrap_state_dict", "rename", "remap",
           "from_official", "check_official_kwargs"]

_WRAPPERS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or matched to the model; the message says what is wrong."""


def unwrap_state_dict(obj) -> dict[str, torch.Tensor]:
    """Strip training containers and ``module.`` / ``_orig_mod.`` prefixes."""
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        key = next((k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise CheckpointError(f"no state_dict found in checkpoint with keys {sorted(obj)[:10]}")
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"a checkpoint must be a mapping of tensors, got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read and unwrap a checkpoint file (tensors on CPU)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint_path {path!r} does not exist or is not a file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            raw = load_file(path, device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint_path {path!r} could not be read ({describe_load_error(e)}); "
                              "expected a torch .pth/.pt/.bin file of tensors or a .safetensors file") from None
    return unwrap_state_dict(raw)


def describe_load_error(e: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` / safetensors failed, without torch's advice to
    retry with ``weights_only=False``: that runs arbitrary code from the file, and a checkpoint that needs it
    is not one visionzoo should open."""
    text = str(e)
    if "WeightsUnpickler error:" in text:  # the reason torch found, after its retry advice
        text = text.split("WeightsUnpickler error:", 1)[1]
        reason = "the file holds objects other than tensors and plain containers: " + \
            next((ln.strip() for ln in text.splitlines() if ln.strip()), "unsupported pickle content")
        reason = reason.split(" Please use ")[0].split(" Please file ")[0]
    else:
        reason = next((ln.strip() for ln in text.splitlines() if ln.strip()), "") or "no message"
    if "weights_only" in reason:
        reason = "not a checkpoint torch can read as tensors"
    return f"{type(e).__name__}: {reason}"


def rename(state_dict: Mapping[str, torch.Tensor], rules: Iterable[tuple[str, str]],
           transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Apply regex substitution ``rules`` (in order) to every key; ``transform(new_key, tensor)`` may
    reshape values (e.g. Linear -> 1x1 conv)."""
    compiled = [(re.compile(a), b) for a, b in rules]
    out = {}
    for k, v in state_dict.items():
        for pat, rep in compiled:
            k = pat.sub(rep, k)
        out[k] = transform(k, v) if transform is not None else v
    return out


def _fit(sd: dict, model: torch.nn.Module) -> tuple[dict, set, set]:
    """Fill missing BN ``num_batches_tracked`` counters (older checkpoints lack them); return the
    state dict with the still-missing and unexpected keys."""
    target = model.state_dict()
    sd = dict(sd)
    for k in target:
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros((), dtype=torch.long)
    missing = set(target) - set(sd)
    unexpected = set(sd) - set(target)
    return sd, missing, unexpected


def remap(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module,
          converters: Mapping[str, Callable[[dict], dict]]) -> dict[str, torch.Tensor]:
    """Convert ``state_dict`` to ``model``'s key layout with the first converter that fits exactly.

    ``converters`` maps a layout name (``official``, ``timm``...) to a function of the state dict.
    Classifier keys are compared too; timm's loader removes them before this when the class count
    changes.
    """
    state_dict = unwrap_state_dict(state_dict)
    attempts = {"visionzoo": lambda sd: sd, **converters}
    report = []
    for layout, fn in attempts.items():
        try:
            candidate = fn(dict(state_dict))
        except Exception as e:  # a converter that does not apply may fail on foreign keys
            report.append(f"{layout}: conversion failed ({type(e).__name__}: {e})")
            continue
        candidate, missing, unexpected = _fit(candidate, model)
        if not missing and not unexpected:
            return candidate
        report.append(f"{layout}: {len(missing)} missing (e.g. {sorted(missing)[:3]}), "
                      f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:3]})")
    raise CheckpointError(f"checkpoint keys match no known layout of {type(model).__name__}:\n  " + "\n  ".join(report))


def official_layernorm_eps(family: str, norm_layer) -> float:
    """eps of an official ``norm_layer`` argument: ``nn.LayerNorm`` (or None / its name: 1e-5),
    ``partial(nn.LayerNorm, eps=...)``, or the fixtures' string form ``"LayerNorm(eps=1e-6)"``. Any other
    norm raises ``NotImplementedError``."""
    if norm_layer is None or norm_layer is torch.nn.LayerNorm:
        return 1e-5
    if isinstance(norm_layer, functools.partial) and norm_layer.func is torch.nn.LayerNorm:
        return float(norm_layer.keywords.get("eps", 1e-5))
    if isinstance(norm_layer, str) and "LayerNorm" in norm_layer:
        found = re.search(r"eps\s*=\s*([0-9.eE+-]+)", norm_layer)
        return float(found.group(1)) if found else 1e-5
    raise NotImplementedError(f"from_official({family!r}): only LayerNorm norm_layers are implemented, "
                              f"got {norm_layer!r}")


def check_official_kwargs(family: str, kwargs: Mapping, allowed: Iterable[str],
                          supported: Mapping[str, object] | None = None, layernorm_eps: float | None = None) -> dict:
    """A copy of an official constructor's ``kwargs`` after the checks every family makes.

    Args:
        family: the official family name (for the messages).
        allowed: every argument the official constructor takes; others raise ``TypeError``.
        supported: argument -> the only value (its default) visionzoo implements; another value raises
            ``NotImplementedError`` naming them all.
        layernorm_eps: the family builds LayerNorms of this eps only: ``norm_layer`` is checked to be
            one (:func:`official_layernorm_eps`) and dropped from the copy.
    """
    kwargs = dict(kwargs)
    unknown = set(kwargs) - set(allowed)
    if unknown:
        raise TypeError(f"from_official({family!r}): unsupported official arguments {sorted(unknown)}")
    off = {k: kwargs[k] for k, ok in (supported or {}).items() if k in kwargs and kwargs[k] != ok}
    if off:
        raise NotImplementedError(f"from_official({family!r}): only {dict(supported)} is implemented for these "
                                  f"arguments; got {off}")
    if layernorm_eps is not None:
        norm = kwargs.pop("norm_layer", None)
        if official_layernorm_eps(family, norm) != layernorm_eps:
            raise NotImplementedError(f"from_official({family!r}): only norm_layer=nn.LayerNorm with eps "
                                      f"{layernorm_eps} is implemented, got {norm!r}")
    return kwargs


def from_official(family: str, official_kwargs: Mapping, state_dict: Mapping[str, torch.Tensor] | None = None):
    """Build the visionzoo model equivalent to an official constructor call.

    Args:
        family: the official family name (``eca_resnet``, ``cbam_resnet``, ``senet``, ``nat``...;
            see :func:`visionzoo.list_official_families`).
        official_kwargs: the official constructor's keyword arguments (official names). The ECA/CBAM
            fixtures' ``width_rebuild`` (``{"base_width": 16}``) may be passed inside it, either as
            ``width_rebuild={...}`` or flattened.
        state_dict: optional official state dict, loaded strictly after conversion.

    Returns:
        the model, in eval mode if weights were loaded.
    """
    from .models import _registry

    builders = {name: fam for fam in _registry.FAMILIES.values() for name in fam.official}
    if family not in builders:
        raise ValueError(f"from_official: unknown family {family!r}; known: {sorted(builders)}")
    kwargs = dict(official_kwargs)
    kwargs.update(kwargs.pop("width_rebuild", None) or {})
    variant, overrides, model_kwargs = builders[family].official[family](kwargs)
    model = _registry.build(variant, **overrides, **model_kwargs)
    if state_dict is not None:
        sd = {k: (v.float() if v.is_floating_point() else v) for k, v in unwrap_state_dict(state_dict).items()}
        model.load_state_dict(builders[family].filter_fn(sd, model), strict=True)
        model.eval()
    return model
