"""timm's auto-augment on current Pillow: posterize with 0 bits.

timm 1.0.31's RandAugment / AutoAugment ``Posterize`` ops map their magnitude to the bits to keep with
``int(level / 10 * 4)`` (and ``4 - ...`` for the increasing variant), which is 0 for low (or, with
``mstd`` noise, clipped) magnitudes. Pillow up to 12 accepted ``ImageOps.posterize(img, 0)`` and returned
a black image (every bit masked off); Pillow 13 raises ``ValueError: bits must be between or equal to 1
and 8``, about twice per thousand RandAugment calls at ``rand-m9-mstd0.5-inc1`` -- a DataLoader worker
dies within the first ImageNet epoch. :func:`install` points timm's ``Posterize*`` ops at
:func:`posterize`, which keeps the old result for 0 bits (black, the image's mode and size) and calls
Pillow for 1-7 bits, so every policy string behaves as it did on the Pillow timm was written for.
"""
from __future__ import annotations

from PIL import Image, ImageOps

__all__ = ["posterize", "install"]

_POSTERIZE_OPS = ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")


def posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """Keep the ``bits_to_keep`` most significant bits of every channel (>= 8: unchanged; <= 0: black)."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # all bits masked off: what Pillow < 13 returned
    return ImageOps.posterize(img, int(bits_to_keep))


def install() -> None:
    """Route timm's auto-augment ``Posterize*`` ops through :func:`posterize` (idempotent). Ops built
    afterwards (every ``create_transform(auto_augment=...)``) pickle a reference to this module, so
    DataLoader workers started with ``spawn`` get it too."""
    from timm.data import auto_augment

    for name in _POSTERIZE_OPS:
        if name in auto_augment.NAME_TO_OP:
            auto_augment.NAME_TO_OP[name] = posterize
