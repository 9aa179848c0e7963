"""visionzoo's model registry, on timm's machinery.

A family module declares its frozen config dataclass, model class, ``VARIANTS`` table and
pretrained cfgs, then calls :func:`register_family`. That generates the module's timm
``default_cfgs`` and one ``@register_model`` entrypoint per variant, named ``vz_<name>`` in timm's
registry so it can never replace a timm model. Architecture overrides passed to ``create_model``
(``depths=(1, 1, 1, 1)``) go through ``dataclasses.replace``, so a misspelt field raises; a family may
keep old field names as deprecated ``aliases``. Each family also carries ``tiny``: the reduced
config the contract tests run (:func:`tiny_overrides`).
"""
from __future__ import annotations

import dataclasses
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from . import _hf_layout, _pretrained_sources
from ._base import feature_cfg
from ._checks import check_build_args
from ._classifier_weights import install

__all__ = ["PREFIX", "ModelEntry", "FamilyEntry", "MODELS", "FAMILIES", "register_family", "build", "tiny_overrides"]

PREFIX = "vz_"


@dataclass(frozen=True)
class FamilyEntry:
    name: str
    module: str
    model_cls: type
    filter_fn: Callable
    #: official family name (as in the fixtures) -> fn(official_kwargs) -> (variant, cfg_overrides, model_kwargs)
    official: dict[str, Callable] = field(default_factory=dict)
    paper: str = ""
    #: fn(cfg) -> config overrides of a reduced model (contract tests); None runs the full size
    tiny: Callable | None = None
    #: deprecated config field name -> its name now
    aliases: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    cfg: Any
    tag: str
    pretrained_cfg: dict
    #: facts for docs and tests: official param count key, official top-1, GFLOPs source
    meta: dict = field(default_factory=dict)
    #: every pretrained tag (``tag`` first) -> its timm pretrained cfg (see ``_pretrained_sources``)
    tag_cfgs: dict = field(default_factory=dict)

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(self.tag_cfgs) or (self.tag,)


MODELS: dict[str, ModelEntry] = {}
FAMILIES: dict[str, FamilyEntry] = {}


def _split_kwargs(cfg: Any, kwargs: dict, aliases: dict[str, str]) -> tuple[dict, dict]:
    for old, new in aliases.items():
        if old in kwargs:
            warnings.warn(f"{type(cfg).__name__}.{old} is deprecated; use {new}=", FutureWarning, stacklevel=4)
            if new in kwargs:
                raise TypeError(f"both {old}= (deprecated) and {new}= given")
            kwargs[new] = kwargs.pop(old)
    names = {f.name for f in dataclasses.fields(cfg)}
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    return overrides, kwargs


def build(name: str, pretrained: bool = False, **kwargs):
    """Build registered variant ``name`` through timm's ``build_model_with_cfg``."""
    entry = MODELS[name]
    family = FAMILIES[entry.family]
    overrides, kwargs = _split_kwargs(entry.cfg, dict(kwargs), family.aliases)
    cfg = dataclasses.replace(entry.cfg, **overrides) if overrides else entry.cfg
    out_indices = tuple(range(family.model_cls.num_stages(cfg)))
    check_build_args(cfg, kwargs, len(out_indices))
    # timm's feature_cls= / out_map= only mean something with features_only=True (else the model rejects them)
    features = feature_cfg(out_indices, *(kwargs.pop(k, None) for k in ("feature_cls", "out_map"))) \
        if kwargs.get("features_only") else feature_cfg(out_indices)
    return install(build_model_with_cfg(  # install: classifier checkpoints load into headless / feature models
        family.model_cls, PREFIX + name, pretrained, cfg=cfg,
        pretrained_filter_fn=family.filter_fn, feature_cfg=features, **kwargs,
    ))


def _entrypoint(module: str, name: str) -> Callable:
    def entrypoint(pretrained: bool = False, **kwargs):
        return build(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = PREFIX + name
    entrypoint.__module__ = module
    entrypoint.__doc__ = f"visionzoo {name} ({MODELS[name].family} family); see visionzoo.model_info('{name}')."
    return entrypoint


def register_family(module: str, family: str, model_cls: type, variants: dict[str, Any],
                    pretrained_cfgs: dict[str, dict], filter_fn: Callable, *, tag: str = "in1k",
                    meta: dict[str, dict] | None = None, official: dict[str, Callable] | None = None,
                    paper: str = "", tiny: Callable | None = None, aliases: dict[str, str] | None = None) -> None:
    """Register every variant of a family (call at the bottom of the family module).

    Args:
        module: the family module's ``__name__``.
        variants: plain name -> frozen config.
        pretrained_cfgs: plain name -> timm pretrained-cfg dict (data config, head names, license...);
            models with released weights get one tag per source in ``_pretrained_sources`` on top of it.
        filter_fn: the family's ``checkpoint_filter_fn`` (official/timm -> visionzoo keys); families with
            a transformers layout (``_hf_layout``) also read that.
        meta: plain name -> facts (``official_params_key``, ``top1``...).
        official: official family names this module converts, see :class:`FamilyEntry`.
        tiny: ``fn(cfg) -> overrides`` giving a reduced model of each variant for the contract tests
            (a few channels, one block per stage; it must still run every code path of the family).
        aliases: deprecated config field name -> its name now (accepted with a ``FutureWarning``).
    """
    missing = set(variants) ^ set(pretrained_cfgs)
    if missing:
        raise ValueError(f"register_family({family!r}): variants and pretrained_cfgs differ on {sorted(missing)}")
    filter_fn = _hf_layout.accepting_transformers_layout(family, filter_fn)
    FAMILIES[family] = FamilyEntry(family, module, model_cls, filter_fn, dict(official or {}), paper, tiny,
                                   dict(aliases or {}))
    # released weights: one tag per source recorded in _pretrained_sources, else the family tag
    by_tag = {n: _pretrained_sources.tag_cfgs(n, family, pretrained_cfgs[n], tag) for n in variants}
    mod = sys.modules[module]
    mod.default_cfgs = generate_default_cfgs(
        {f"{PREFIX}{n}.{t}": dict(c, architecture=PREFIX + n) for n in variants for t, c in by_tag[n].items()})
    for n in variants:  # our first tag is the default even without weights (timm would pick the first with weights)
        order = mod.default_cfgs[PREFIX + n].tags
        order.remove(first := next(iter(by_tag[n])))
        order.appendleft(first)
    for n, cfg in variants.items():
        if n in MODELS:
            raise ValueError(f"model name {n!r} registered twice ({MODELS[n].family} and {family})")
        default = next(iter(by_tag[n]))
        MODELS[n] = ModelEntry(n, family, cfg, default, by_tag[n][default], dict((meta or {}).get(n, {})), by_tag[n])
        register_model(_entrypoint(module, n))


def tiny_overrides(name: str) -> dict:
    """The config overrides of registered model ``name``'s reduced form (``{}``: full size)."""
    entry = MODELS[name]
    fn = FAMILIES[entry.family].tiny
    return fn(entry.cfg) if fn else {}
