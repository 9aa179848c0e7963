"""timm's auto-augment policies on current Pillow (posterize with 0 bits), transform failures skipped
like unreadable images, and the --max-skipped cap."""
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from timm.data import create_transform
from timm.data.auto_augment import NAME_TO_OP

from visionzoo.engine import augment_compat
from visionzoo.engine.data import Digits, SampleDataset, collate_skip

#: every policy string the README or `train.py --help` shows
POLICIES = ["rand-m9-mstd0.5-inc1", "rand-m9-mstd0.5", "original", "v0"]


def test_pillow_rejects_zero_bits_and_ours_keeps_the_old_result():
    img = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3), "RGB")
    try:
        ImageOps.posterize(img, 0)
        zero_ok = True
    except ValueError:
        zero_ok = False
    black = augment_compat.posterize(img, 0)
    assert black.mode == img.mode and black.size == img.size and not np.asarray(black).any()
    assert np.array_equal(np.asarray(augment_compat.posterize(img, 3)), np.asarray(ImageOps.posterize(img, 3)))
    assert augment_compat.posterize(img, 8) is img
    assert NAME_TO_OP["Posterize"] is augment_compat.posterize  # installed by visionzoo.engine.data
    if zero_ok:
        pytest.skip("this Pillow still accepts 0 bits: nothing to work around (the control needs Pillow >= 13)")
    from timm.data.auto_augment import posterize as timm_posterize
    with pytest.raises(ValueError, match="bits"):  # the control: timm's own op on this Pillow
        timm_posterize(img, 0)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_runs_on_10000_random_images(policy):
    """2,500 images x 4 repeats of the policy's random draws = 10,000 transform calls per policy."""
    tf = create_transform((3, 16, 16), is_training=True, auto_augment=policy)
    rng = np.random.default_rng(0)
    random.seed(0)
    torch.manual_seed(0)
    for i in range(2500):
        img = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), "RGB")
        for _ in range(4):
            out = tf(img)
            assert out.shape == (3, 16, 16)


class _Boom:
    """A transform that fails on every third call (an augmentation bug on some samples)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, img):
        self.calls += 1
        if self.calls % 3 == 0:
            raise ValueError("bits must be between or equal to 1 and 8")
        return torch.zeros(3, 8, 8)


def test_transform_errors_are_skipped_counted_and_warned_once(caplog):
    ds = SampleDataset(Digits("train"), _Boom(), "RGB")
    items = [ds[i] for i in range(9)]
    assert sum(x is None for x in items) == 3
    warnings = [r for r in caplog.records if "the transform failed" in r.getMessage()]
    assert len(warnings) == 1 and "bits must be between" in warnings[0].getMessage()
    images, targets, skipped = collate_skip(items)
    assert skipped == 3 and images.shape[0] == 6
