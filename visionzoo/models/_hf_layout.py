"""Hugging Face ``transformers`` checkpoints of NAT / DiNAT and VAN -> the official layouts.

The papers' own Hub repositories (``shi-labs/nat-*``, ``shi-labs/dinat-*``,
``Visual-Attention-Network/van-*``) hold ``NatForImageClassification`` / ``DinatForImageClassification``
/ ``VanForImageClassification`` state dicts. These functions rename them into the official
repositories' layout, which the family converters (``nat.checkpoint_filter_fn``,
``van.checkpoint_filter_fn``) already read; :func:`accepting_transformers_layout` puts the step in
front of a family converter. Values are unchanged except where transformers splits a tensor the
official code keeps whole: ``query`` / ``key`` / ``value`` are concatenated into ``qkv`` (official
order q, k, v) and ``layer_scale_parameters`` ``[2, C]`` becomes ``gamma1`` / ``gamma2``.

transformers' ``VanModel`` has a final ``layernorm`` that its forward never uses (the stage norms
are the official ``norm{i}``); it is dropped.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping

import torch

from .. import convert

__all__ = ["accepting_transformers_layout", "is_transformers_layout", "nat_to_official", "van_to_official"]

_NAT_PREFIXES = ("nat.", "dinat.")
_NAT_RULES = [
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.", r"levels.\1.blocks.\2."),
    (r"^encoder\.levels\.(\d+)\.downsample\.", r"levels.\1.downsample."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.self\.rpb$", ".attn.rpb"),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"^layernorm\.", "norm."),
]
_QKV = re.compile(r"^(.*)\.attention\.self\.(query|key|value)\.(weight|bias)$")

_VAN_RULES = [
    (r"^encoder\.stages\.(\d+)\.", lambda m: f"stage{int(m.group(1)) + 1}."),
    (r"^stage(\d+)\.embeddings\.convolution\.", r"patch_embed\1.proj."),
    (r"^stage(\d+)\.embeddings\.normalization\.", r"patch_embed\1.norm."),
    (r"^stage(\d+)\.normalization\.", r"norm\1."),
    (r"^stage(\d+)\.layers\.", r"block\1."),
    (r"\.pre_normomalization\.", ".norm1."),  # sic: transformers' attribute name
    (r"\.post_normalization\.", ".norm2."),
    (r"\.attention\.pre_projection\.conv\.", ".attn.proj_1."),
    (r"\.attention\.post_projection\.", ".attn.proj_2."),
    (r"\.attention\.attention_layer\.attention\.depth_wise\.", ".attn.spatial_gating_unit.conv0."),
    (r"\.attention\.attention_layer\.attention\.depth_wise_dilated\.", ".attn.spatial_gating_unit.conv_spatial."),
    (r"\.attention\.attention_layer\.attention\.point_wise\.", ".attn.spatial_gating_unit.conv1."),
    (r"\.attention_scaling\.weight$", ".layer_scale_1"),
    (r"\.mlp_scaling\.weight$", ".layer_scale_2"),
    (r"\.mlp\.in_dense\.", ".mlp.fc1."),
    (r"\.mlp\.depth_wise\.", ".mlp.dwconv.dwconv."),
    (r"\.mlp\.out_dense\.", ".mlp.fc2."),
]


def _strip(sd: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> tuple[dict, dict]:
    """(backbone keys without the model prefix, classifier keys renamed to the official ``head``)."""
    body, head = {}, {}
    for k, v in sd.items():
        if k.startswith("classifier."):
            head["head." + k[len("classifier.") :]] = v
            continue
        prefix = next((p for p in prefixes if k.startswith(p)), None)
        if prefix is None:
            raise convert.CheckpointError(
                f"unexpected key {k!r} in a transformers checkpoint (expected prefixes {prefixes} or 'classifier.')"
            )
        body[k[len(prefix) :]] = v
    return body, head


def nat_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``NatForImageClassification`` / ``DinatForImageClassification`` keys -> official
    ``NAT`` / ``DiNAT`` keys (``classification/nat.py``)."""
    body, out = _strip(sd, _NAT_PREFIXES)
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    rest = {}
    for k, v in body.items():
        m = _QKV.match(k)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = v
        elif k.endswith(".layer_scale_parameters"):
            base = k[: -len("layer_scale_parameters")]
            rest[base + "gamma1"], rest[base + "gamma2"] = v[0], v[1]
        else:
            rest[k] = v
    for (base, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise convert.CheckpointError(
                f"{base}.attention.self: {kind} of {sorted(parts)} only; need query, key, value"
            )
        rest[f"{base}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    out.update(convert.rename(rest, _NAT_RULES))
    return out


def van_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``VanForImageClassification`` keys -> official ``VAN`` keys (``models/van.py``)."""
    body, out = _strip(sd, ("van.",))
    body = {k: v for k, v in body.items() if not k.startswith("layernorm.")}  # unused by transformers' forward
    out.update(convert.rename(body, _VAN_RULES))
    return out


#: visionzoo family -> (model prefixes of its transformers checkpoints, converter to the official layout)
_BY_FAMILY: dict[str, tuple[tuple[str, ...], Callable]] = {
    "nat": (_NAT_PREFIXES, nat_to_official),
    "van": (("van.",), van_to_official),
}


def is_transformers_layout(family: str, sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``sd`` is a transformers checkpoint of ``family`` (its keys carry the model prefix)."""
    prefixes = _BY_FAMILY.get(family, ((),))[0]
    return bool(prefixes) and any(k.startswith(prefixes) for k in sd)


def accepting_transformers_layout(family: str, filter_fn: Callable) -> Callable:
    """``filter_fn`` that also reads the family's transformers layout (unchanged for other families)."""
    if family not in _BY_FAMILY:
        return filter_fn

    @functools.wraps(filter_fn)
    def filter_with_transformers(state_dict, model):
        sd = convert.unwrap_state_dict(state_dict)
        if is_transformers_layout(family, sd):
            sd = _BY_FAMILY[family][1](sd)
        return filter_fn(sd, model)

    return filter_with_transformers
