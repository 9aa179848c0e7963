"""Datasets and loaders for the CLIs.

Sources (``--dataset``):
* ``''`` (default with ``--data-dir``): an ImageFolder tree ``DATA_DIR/<split>/<class>/<image>``,
  read through timm's folder reader;
* ``torch/NAME``: a torchvision dataset already on disk under ``--data-dir`` (``cifar10``,
  ``cifar100``, ``mnist``, ``fashion_mnist``, ``kmnist``, ``qmnist``, ``imagenet``, ``places365``...;
  ``--dataset-download`` lets torchvision fetch it), built with timm's ``create_dataset``;
* ``digits``: the embedded default, scikit-learn's handwritten digits, no download (:class:`Digits`);
* ``synthetic``: random images for throughput runs.

Two properties that timm's loader does not give:
* **unreadable samples are skipped and counted**: a corrupt or truncated image logs one warning
  naming the file and is dropped from its batch; the collate function returns how many were dropped,
  so the loops can report the count (reduced over ranks). A transform that raises on a sample (inside
  a DataLoader worker) is handled the same way, warned once per kind of error, instead of killing the
  worker and the run; the training loop stops the run if too many samples are skipped;
* timm's auto-augment runs on current Pillow (:mod:`.augment_compat`);
* **augmentation is a function of (seed, epoch, index)**: the sampler hands each index its own seed,
  so a batch is the same whichever worker builds it and whether or not the epoch was resumed
  mid-way. That is what makes kill-and-resume reproduce an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Sampler
from torch.utils.data._utils.collate import default_collate

from . import augment_compat
from .errors import UsageError

__all__ = ["DIGITS", "SYNTHETIC", "Digits", "SampleDataset", "EpochSampler", "build_dataset", "build_loader",
           "check_data_args", "collate_skip", "find_split_dir"]

_logger = logging.getLogger(__name__)
augment_compat.install()

DIGITS = ("digits", "sklearn/digits")
SYNTHETIC = "synthetic"
_TRAIN_SPLITS = ("train", "training")
_EVAL_SPLITS = ("validation", "val", "valid", "eval", "evaluation", "test")
_TORCH_DATASETS = ("cifar10", "cifar100", "mnist", "kmnist", "fashion_mnist", "qmnist", "imagenet", "places365",
                   "inaturalist", "inat", "image_folder", "folder")


# ---- sources ----------------------------------------------------------------------------------
class Digits:
    """scikit-learn's handwritten digits (UCI optdigits test set): 1,797 grey 8x8 images of 0-9,
    shipped inside scikit-learn, so nothing is downloaded.

    Split: a fixed stratified partition (scikit-learn's ``train_test_split``, seed 0) — ``train``
    1,437 images, ``validation`` (also ``val`` / ``test``) 360 images. Pixels (0-16) are
    scaled to 0-255 grey PIL images; the transform resizes them to the model's input size.
    """

    def __init__(self, split: str = "train"):
        try:
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split
        except ImportError as e:  # pragma: no cover - scikit-learn is in visionzoo[train]
            raise UsageError("the embedded 'digits' dataset needs scikit-learn: pip install 'visionzoo[train]'") from e
        if split in _TRAIN_SPLITS:
            train = True
        elif split in _EVAL_SPLITS:
            train = False
        else:
            raise UsageError(f"digits has the splits 'train' and 'validation' (or 'val' / 'test'), got {split!r}")
        data = load_digits()
        train_idx, val_idx = train_test_split(np.arange(len(data.target)), test_size=360, random_state=0,
                                              stratify=data.target)
        keep = np.sort(train_idx if train else val_idx)
        self.images = np.round(data.images[keep] * (255.0 / 16.0)).astype(np.uint8)
        self.targets = data.target[keep].astype(np.int64)
        self.classes = [str(c) for c in range(10)]
        self.split = "train" if train else "validation"

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int):
        return Image.fromarray(self.images[index], mode="L"), int(self.targets[index])

    def describe(self, index: int) -> str:
        return f"digits[{self.split}][{index}]"


class _Folder:
    """``root/<class>/<image>`` through timm's folder reader; files are opened per access."""

    def __init__(self, root: str, class_map: str = ""):
        from timm.data.readers.reader_image_folder import ReaderImageFolder
        try:
            reader = ReaderImageFolder(root, class_map=class_map)
        except RuntimeError as e:  # "Found 0 images in subfolders of ..."
            raise UsageError(str(e).split("\n")[0]) from None
        self.samples = reader.samples
        self.classes = sorted(reader.class_to_idx, key=reader.class_to_idx.get)
        self.root = root

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int):
        path, target = self.samples[index]
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()  # decode now, inside the caller's error handling
        return img, int(target)

    def describe(self, index: int) -> str:
        return self.samples[index][0]


class _Torchvision:
    """A torchvision dataset returning ``(PIL image, target)`` (its own transform unset)."""

    def __init__(self, name: str, root: str, split: str, download: bool):
        from timm.data import create_dataset
        try:
            self.ds = create_dataset(name, root=root, split=split, download=download)
        except (RuntimeError, FileNotFoundError, AssertionError) as e:
            hint = "" if download else " (pass --dataset-download to let torchvision fetch it)"
            raise UsageError(f"cannot open {name} under {root!r}: {str(e).splitlines()[0]}{hint}") from None
        self.ds.transform = None
        classes = getattr(self.ds, "classes", None)
        self.classes = list(classes) if classes is not None else None
        self.name = name

    def __len__(self) -> int:
        return len(self.ds)

    def load(self, index: int):
        img, target = self.ds[index]
        return img, int(target)

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"


class _Synthetic:
    """Random uint8 images of a fixed size (throughput runs); labels are random too."""

    def __init__(self, num_samples: int, input_size: tuple[int, int, int], num_classes: int):
        self.n, self.input_size, self.num_classes = num_samples, tuple(input_size), num_classes
        self.classes = [str(c) for c in range(num_classes)]

    def __len__(self) -> int:
        return self.n

    def load(self, index: int):
        g = torch.Generator().manual_seed(index)
        x = torch.rand(self.input_size, generator=g)
        return x, int(torch.randint(self.num_classes, (), generator=g))

    def describe(self, index: int) -> str:
        return f"synthetic[{index}]"


class _Subset:
    """``num_samples`` indices spread evenly over the source (so folder trees keep every class)."""

    def __init__(self, base, num_samples: int):
        self.base = base
        self.indices = np.unique(np.linspace(0, len(base) - 1, num_samples).round().astype(int)).tolist()
        self.classes = base.classes

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int):
        return self.base.load(self.indices[index])

    def describe(self, index: int) -> str:
        return self.base.describe(self.indices[index])


def find_split_dir(data_dir: str, split: str) -> str | None:
    """``data_dir/split``, or the usual synonyms (``val`` for ``validation``...); None if absent."""
    synonyms = _TRAIN_SPLITS if split in _TRAIN_SPLITS else _EVAL_SPLITS if split in _EVAL_SPLITS else ()
    for name in (split, *synonyms):
        if name and os.path.isdir(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    return None


def _has_class_dirs(path: str) -> bool:
    return any(e.is_dir() for e in os.scandir(path))


def resolve_dataset_name(dataset: str | None, data_dir: str | None) -> str:
    """The dataset actually used: ``''`` without ``--data-dir`` means the embedded digits."""
    dataset = (dataset or "").strip()
    if not dataset and not data_dir:
        return "digits"
    return dataset.lower() if dataset.lower() in DIGITS + (SYNTHETIC,) else dataset


def check_data_args(dataset: str, data_dir: str | None, splits: list[str], download: bool = False,
                    allow_root_fallback: bool = False) -> None:
    """Fail fast (before any work) on a missing data dir, split folder or unknown dataset."""
    if dataset in DIGITS or dataset == SYNTHETIC:
        for split in splits if dataset in DIGITS else ():
            if split not in _TRAIN_SPLITS + _EVAL_SPLITS:
                raise UsageError(f"digits has the splits 'train' and 'validation', got {split!r}")
        return
    prefix, sep, name = dataset.partition("/")
    if sep and prefix.lower() == "torch":
        if name.lower() not in _TORCH_DATASETS:
            raise UsageError(f"unknown torchvision dataset {name!r}; known: {', '.join(_TORCH_DATASETS)}")
        if not data_dir:
            raise UsageError(f"--dataset {dataset} needs --data-dir (the folder torchvision keeps it in)")
        if not os.path.isdir(data_dir) and not download:
            raise UsageError(f"--data-dir {data_dir!r} does not exist (pass --dataset-download to fetch {name})")
        return
    if dataset:
        raise UsageError(f"unknown --dataset {dataset!r}; use '' (an ImageFolder tree in --data-dir), "
                         f"'torch/NAME' (torchvision, e.g. torch/cifar10), 'digits' or 'synthetic'")
    if not os.path.isdir(data_dir):
        raise UsageError(f"--data-dir {data_dir!r} does not exist or is not a directory")
    for split in splits:
        if find_split_dir(data_dir, split) is None and not (allow_root_fallback and _has_class_dirs(data_dir)):
            raise UsageError(f"--data-dir {data_dir!r} has no {split!r} folder "
                             f"(expected {os.path.join(data_dir, split)}/<class>/<image>)")


def build_source(dataset: str, data_dir: str | None, split: str, *, class_map: str = "", download: bool = False,
                 num_samples: int | None = None, input_size=(3, 224, 224), num_classes: int = 1000):
    if dataset in DIGITS:
        base = Digits(split)
    elif dataset == SYNTHETIC:
        base = _Synthetic(num_samples or 1024, input_size, num_classes)
    elif dataset.lower().startswith("torch/"):
        base = _Torchvision(dataset, data_dir, split, download)
    else:
        base = _Folder(find_split_dir(data_dir, split) or data_dir, class_map=class_map)
    if num_samples and dataset != SYNTHETIC and num_samples < len(base):
        base = _Subset(base, num_samples)
    return base


# ---- the dataset the loaders see --------------------------------------------------------------
@contextlib.contextmanager
def _seeded(seed: int):
    """Seed python / numpy / torch for one sample's augmentation, then put the caller's state back."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)


class SampleDataset(torch.utils.data.Dataset):
    """``(image tensor, target)`` per index, or ``None`` for an unreadable sample (logged once).

    Items are plain indices or ``(index, seed)`` pairs from :class:`EpochSampler`; with a seed, the
    transform's randomness comes from it alone.
    """

    def __init__(self, source, transform=None, img_mode: str | None = "RGB"):
        self.source, self.transform, self.img_mode = source, transform, img_mode
        self._warned: set[int] = set()
        self._warned_transform: set[str] = set()

    @property
    def classes(self):
        return self.source.classes

    @property
    def num_classes(self) -> int | None:
        return len(self.source.classes) if self.source.classes is not None else None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        try:
            img, target = self.source.load(index)
            if isinstance(img, Image.Image) and self.img_mode and img.mode != self.img_mode:
                img = img.convert(self.img_mode)
        except Exception as e:  # noqa: BLE001 - any decoding failure: skip the sample, never the run
            if index not in self._warned:
                self._warned.add(index)
                _logger.warning("skipping unreadable sample %s: %s: %s", self.source.describe(index),
                                type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            return None
        if self.transform is not None and isinstance(img, Image.Image):
            try:
                if seed is None:
                    img = self.transform(img)
                else:
                    with _seeded(seed):
                        img = self.transform(img)
            except Exception as e:  # noqa: BLE001 - an augmentation bug on one sample: skip it, never the run
                kind = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                if kind not in self._warned_transform:
                    self._warned_transform.add(kind)
                    _logger.warning("skipping sample %s: the transform failed (%s); further samples failing the "
                                    "same way are skipped and counted silently", self.source.describe(index), kind)
                return None
        return img, target


def collate_skip(batch):
    """Collate the readable samples; returns ``(images, targets, n_skipped)`` (``None`` images if all were)."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, None, skipped
    images, targets = default_collate(good)
    return images, targets, skipped


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % (2**63 - 1)


class EpochSampler(Sampler):
    """Deterministic order per epoch, sharded over ranks, resumable part-way; yields ``(index, seed)``.

    Training (``shuffle=True``) pads the permutation so every rank gets as many samples (as
    ``DistributedSampler`` does). Evaluation shards without padding, so summing per-rank counts
    gives exact metrics.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.size, self.shuffle, self.seed, self.rank, self.world_size = size, shuffle, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch to draw, and how many of this rank's samples to skip (resuming mid-epoch)."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 10_007 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
            total = math.ceil(self.size / self.world_size) * self.world_size
            while len(order) < total:
                order += order[:total - len(order)]
        else:
            order = list(range(self.size))
        return order[self.rank::self.world_size]

    def __iter__(self):
        for index in self._indices()[self.start:]:
            yield index, sample_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.start)


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)


def build_loader(dataset: SampleDataset, batch_size: int, *, training: bool, seed: int, rank: int = 0,
                 world_size: int = 1, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    sampler = EpochSampler(len(dataset), shuffle=training, seed=seed, rank=rank, world_size=world_size)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_skip,
        drop_last=training, pin_memory=pin_memory, persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),  # never draw from the global RNG (resume equality)
    )


def build_dataset(dataset: str, data_dir: str | None, split: str, transform, *, class_map: str = "",
                  download: bool = False, num_samples: int | None = None, img_mode: str | None = "RGB",
                  input_size=(3, 224, 224), num_classes: int = 1000) -> SampleDataset:
    source = build_source(dataset, data_dir, split, class_map=class_map, download=download,
                          num_samples=num_samples, input_size=input_size, num_classes=num_classes)
    return SampleDataset(source, transform, img_mode)
