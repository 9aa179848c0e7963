"""Argument checks of the model contract, shared by every family: one-line ``ValueError`` s that name
the argument and the constraint, raised when the model is built (or called), not later in training.

* :func:`check_build_args`: ``num_classes``, ``in_chans``, ``drop_rate`` / ``drop_path_rate``, stage
  ``depths`` and ``features_only`` ``out_indices`` (what ``create_model`` passes to a family).
* :func:`check_image_batch`: a model's input is ``[B, in_chans, H, W]`` (the same message for every
  family instead of whatever reshape first trips over a 3-D tensor). A leaf for FX tracing.
"""
from __future__ import annotations

import numbers

import torch
from timm.layers import register_notrace_function

__all__ = ["check_build_args", "check_image_batch", "check_num_classes", "normalize_out_indices"]


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_num_classes(num_classes) -> None:
    if not _is_int(num_classes) or num_classes < 0:
        raise ValueError(
            f"num_classes must be an int >= 0 (0: no classifier, pooled features out), got {num_classes!r}"
        )


def normalize_out_indices(out_indices, num_stages: int) -> tuple[int, ...]:
    """``out_indices`` (ints, negatives from the end, or an int ``n`` for the last ``n`` stages) as
    increasing stage indices; out of range, repeated or decreasing indices raise."""
    if _is_int(out_indices):
        if not 1 <= out_indices <= num_stages:
            raise ValueError(f"out_indices={out_indices} as an int selects the last n stages: n must be in "
                             f"[1, {num_stages}] for this {num_stages}-stage model")
        return tuple(range(num_stages - out_indices, num_stages))
    idx = tuple(out_indices)
    if not idx or not all(_is_int(i) for i in idx):
        raise ValueError(f"out_indices must be a non-empty sequence of stage indices (ints), got {out_indices!r}")
    bad = [i for i in idx if not -num_stages <= i < num_stages]
    if bad:
        raise ValueError(f"out_indices={idx}: index {bad[0]} is out of range for this {num_stages}-stage model "
                         f"(valid: 0..{num_stages - 1}, or -{num_stages}..-1 from the end)")
    norm = tuple(i % num_stages for i in idx)
    if len(set(norm)) != len(norm):
        raise ValueError(f"out_indices={idx} selects stage(s) {sorted({i for i in norm if norm.count(i) > 1})} "
                         "more than once; each stage gives one feature map")
    if list(norm) != sorted(norm):
        raise ValueError(f"out_indices={idx} (stages {norm}) must be in increasing stage order: feature maps "
                         f"come out shallow to deep; pass {tuple(sorted(idx, key=lambda i: i % num_stages))}")
    return norm


def check_build_args(cfg, kwargs: dict, num_stages: int) -> None:
    """Validate what a family constructor receives, before it builds anything."""
    if "num_classes" in kwargs:
        check_num_classes(kwargs["num_classes"])
    if "in_chans" in kwargs:
        v = kwargs["in_chans"]
        if not _is_int(v) or v <= 0:
            raise ValueError(f"in_chans must be a positive int (input image channels), got {v!r}")
    for key in ("drop_rate", "drop_path_rate", "proj_drop_rate", "attn_drop_rate"):
        v = kwargs.get(key)
        if v is not None and (not isinstance(v, numbers.Real) or not 0.0 <= v < 1.0):
            raise ValueError(f"{key} must be a probability in [0, 1), got {v!r}")
    depths = getattr(cfg, "depths", None)
    if depths is not None:
        empty = [i for i, d in enumerate(depths) if not _is_int(d) or d < 1]
        if empty:
            raise ValueError(f"depths={tuple(depths)}: every stage needs at least one block (stage {empty[0]} has "
                             f"{depths[empty[0]]!r}); an empty stage does not downsample, so its feature_info "
                             "reduction would be wrong")
    if kwargs.get("features_only") and kwargs.get("out_indices") is not None:
        kwargs["out_indices"] = normalize_out_indices(kwargs["out_indices"], num_stages)


@register_notrace_function  # Python control flow on the shape: a leaf for timm's / torchvision's FX tracers
def check_image_batch(x: torch.Tensor, in_chans: int) -> None:
    """``x`` must be ``[B, in_chans, H, W]``."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError("model input x must be a 4-D image batch [B, C, H, W] with C = in_chans = " + str(in_chans)
                         + ", got shape " + str(list(x.shape)))
