"""Official PVT (v1 / v2) and Swin checkpoints -> the hierarchical builder's keys, for the families that
replace their attention (FLatten-PVT / PVTv2 / Swin, Agent-PVT / Swin).

* key rules: :data:`PVT_RULES` (``patch_embed{i}``, ``block{i}.{j}``, ``head``; 1-based stages),
  :data:`PVT_POS_RULE` (v1's ``pos_embed{i}``), :data:`SWIN_RULES` (``patch_embed``,
  ``layers.{i}.downsample`` -> the next stage's downsample, ``layers.{i}.blocks``, ``head``);
* the official derived buffers ``relative_position_index`` / ``attn_mask`` are dropped (rebuilt from the
  window and the map);
* PVT's ``attn.q`` (C -> C) and ``attn.kv`` (C -> 2C) become one ``attn.qkv`` (rows q | k | v) wherever the
  model has one (:func:`merge_q_kv`);
* tensors sized by the build-time ``img_size`` are resized when a checkpoint of another size is loaded,
  as the official fine-tuning loaders do (:func:`fit_resolution`).
"""
from __future__ import annotations

import math
import re
from typing import Callable

import torch
import torch.nn.functional as F

from .. import convert
from ..blocks.agent_attn import resize_axis

__all__ = ["PVT_RULES", "PVT_POS_RULE", "SWIN_RULES", "merge_q_kv", "resize_square", "fit_resolution",
           "official_filter"]

PVT_RULES = [
    (r"^patch_embed1\.", "stem."),
    (r"^patch_embed(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.downsample."),
    (r"^block(\d)\.(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
    (r"^head\.", "head.fc."),
]
PVT_POS_RULE = (r"^pos_embed(\d)$", lambda m: f"stages.{int(m.group(1)) - 1}.pos_embed")
SWIN_RULES = [
    (r"^patch_embed\.", "stem."),
    (r"^layers\.(\d+)\.downsample\.", lambda m: f"stages.{int(m.group(1)) + 1}.downsample."),
    (r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    (r"^head\.", "head.fc."),
]
_DERIVED = ("relative_position_index", "attn_mask")
#: parameter name -> the spatial axis of Agent attention's factorised biases
_AGENT_BIAS_AXIS = {"ah_bias": 3, "aw_bias": 4, "ha_bias": 2, "wa_bias": 3}


def merge_q_kv(sd: dict, target: dict) -> dict:
    """PVT attention ``q`` + ``kv`` -> ``qkv`` (``cat([q, kv], 0)`` for weights and biases) wherever ``target``
    (the model's state dict) has a fused ``qkv``; spatially reducing blocks keep ``q`` and ``kv``."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"^(.*\.attn)\.(q|kv)\.(weight|bias)$", k)
        if m is None or f"{m.group(1)}.qkv.{m.group(3)}" not in target:
            out[k] = v
        elif m.group(2) == "q":
            out[f"{m.group(1)}.qkv.{m.group(3)}"] = torch.cat([v, sd[f"{m.group(1)}.kv.{m.group(3)}"]], 0)
    return out


def resize_square(value: torch.Tensor, shape: torch.Size, mode: str) -> torch.Tensor:
    """A table of a square grid, ``[1, n, C]`` (``pos_embed``, ``positional_encoding``) or ``[n, heads]`` (a Swin
    bias table), resized to the square grid of ``shape`` (``F.interpolate``, ``align_corners=False``). Other
    shapes are returned unchanged (the strict load then names them)."""
    flat = value.dim() == 2
    grid = value.t()[None] if flat else value.transpose(1, 2)  # [1, C, n]
    dst_shape = (shape[1], shape[0]) if flat else (shape[2], shape[1])
    src, dst = math.isqrt(grid.shape[2]), math.isqrt(dst_shape[1])
    if value.dim() not in (2, 3) or src * src != grid.shape[2] or dst * dst != dst_shape[1] \
            or grid.shape[1] != dst_shape[0] or grid.shape[0] != 1:
        return value
    grid = F.interpolate(grid.reshape(1, -1, src, src).float(), size=(dst, dst), mode=mode, align_corners=False)
    grid = grid.reshape(1, -1, dst * dst).to(value.dtype)
    return grid[0].t() if flat else grid.transpose(1, 2)


def fit_resolution(sd: dict, target: dict, pos_embed_mode: str = "bilinear") -> dict:
    """The tensors of ``sd`` (visionzoo keys) whose shape is the build-time ``img_size``'s of another model,
    resized to ``target``'s as the official fine-tuning loaders do: ``positional_encoding`` and
    ``relative_position_bias_table`` bicubically, Agent attention's ``ah/aw/ha/wa_bias`` linearly along their
    spatial axis, PVT v1's ``pos_embed`` with ``pos_embed_mode`` (Agent's loader: bicubic; FLatten's leaves it
    alone, so bilinearly, as the forward interpolates it). Anything else is returned unchanged, so a genuine
    mismatch still fails in ``load_state_dict``."""
    out = dict(sd)
    for k, v in sd.items():
        want = target.get(k)
        if want is None or not torch.is_tensor(v) or tuple(v.shape) == tuple(want.shape) or v.dim() != want.dim():
            continue
        name = k.rsplit(".", 1)[-1]
        if name in _AGENT_BIAS_AXIS:
            axis = _AGENT_BIAS_AXIS[name]
            if all(a == b for d, (a, b) in enumerate(zip(v.shape, want.shape)) if d != axis):
                out[k] = resize_axis(v, axis, want.shape[axis])
        elif name in ("positional_encoding", "relative_position_bias_table", "pos_embed"):
            out[k] = resize_square(v, want.shape, pos_embed_mode if name == "pos_embed" else "bicubic")
    return out


def official_filter(rules: list, pos_embed_mode: str = "bilinear") -> Callable:
    """A family's ``checkpoint_filter_fn``: visionzoo keys pass, official keys are renamed by ``rules``, stripped
    of the derived buffers and their ``q`` / ``kv`` merged; either way the resolution-dependent tensors are
    fitted to the model (:func:`fit_resolution`)."""
    def official(sd: dict, target: dict) -> dict:
        sd = {k: v for k, v in sd.items() if not k.endswith(_DERIVED)}
        return merge_q_kv(convert.rename(sd, rules), target)

    def checkpoint_filter_fn(state_dict, model):
        target = model.state_dict()
        sd = convert.remap(state_dict, model, {"official": lambda s: official(s, target)})
        return fit_resolution(sd, target, pos_embed_mode)

    return checkpoint_filter_fn
