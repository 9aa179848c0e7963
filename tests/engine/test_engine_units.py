"""Unit checks of the engine pieces the scripts rely on (fast, in-process)."""
import os
import random

import numpy as np
import pytest
import torch
from timm.data import create_transform

from visionzoo.engine import checkpoint as ck
from visionzoo.engine.args import parse_kwargs
from visionzoo.engine.data import Digits, EpochSampler, SampleDataset, collate_skip
from visionzoo.engine.errors import UsageError


def test_sampler_resume_and_sharding():
    full = list(EpochSampler(50, shuffle=True, seed=3))
    s = EpochSampler(50, shuffle=True, seed=3)
    s.set_epoch(0, start=20)
    assert list(s) == full[20:] and len(s) == 30
    s.set_epoch(1)
    assert [i for i, _ in s] != [i for i, _ in full]  # a new order each epoch
    shards = [list(EpochSampler(11, shuffle=False, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for sh in shards for i, _ in sh) == list(range(11))  # eval: exact cover, no padding
    train = [len(EpochSampler(11, shuffle=True, rank=r, world_size=3)) for r in range(3)]
    assert train == [4, 4, 4]  # train: padded to equal length


def test_augmentation_depends_only_on_index_and_seed():
    tf = create_transform((3, 16, 16), is_training=True, auto_augment="rand-m9-mstd0.5", re_prob=0.5)
    ds = SampleDataset(Digits("train"), tf, "RGB")
    a = ds[(5, 1234)][0]
    torch.manual_seed(0)
    random.seed(0)
    state = torch.get_rng_state()
    _ = ds[(7, 99)]
    b = ds[(5, 1234)][0]
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state) and random.random() == random.Random(0).random()
    assert not torch.equal(a, ds[(5, 4321)][0])


def test_digits_split():
    train, val = Digits("train"), Digits("validation")
    assert (len(train), len(val)) == (1437, 360) and np.bincount(val.targets).min() >= 35
    img, target = val.load(0)
    assert img.size == (8, 8) and 0 <= target < 10
    with pytest.raises(UsageError):
        Digits("holdout")


def test_collate_skips_unreadable():
    x = torch.zeros(3, 4, 4)
    images, targets, skipped = collate_skip([(x, 1), None, (x, 2)])
    assert images.shape[0] == 2 and targets.tolist() == [1, 2] and skipped == 1
    assert collate_skip([None, None]) == (None, None, 2)


def test_parse_kwargs():
    assert parse_kwargs(["depths=(1, 1, 1, 1)", "stem_width=16", "attn=eca", "widths=[8,16]"]) == dict(
        depths=(1, 1, 1, 1), stem_width=16, attn="eca", widths=(8, 16))
    assert parse_kwargs({"layers": [1, 2]}) == {"layers": (1, 2)}
    with pytest.raises(UsageError):
        parse_kwargs(["=3"])


def test_rng_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ck.capture_rng()
    ck.atomic_save(dict(rng=state), str(tmp_path / "r.pth.tar"))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ck.restore_rng(ck.load_checkpoint(str(tmp_path / "r.pth.tar"))["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_saver_keeps_top_n_best_and_resumes_from_the_newest(tmp_path):
    saver = ck.CheckpointSaver(str(tmp_path), max_history=2)
    for epoch, metric in enumerate([50.0, 70.0, 60.0, 40.0]):
        saver.save_epoch(dict(num_updates=10 * (epoch + 1), state_dict={}), epoch, metric)
    names = sorted(os.listdir(tmp_path))
    assert names == ["checkpoint-1.pth.tar", "checkpoint-2.pth.tar", "last.pth.tar", "model_best.pth.tar"]
    assert ck.load_checkpoint(str(tmp_path / "model_best.pth.tar"))["num_updates"] == 20
    saver.save_recovery(dict(num_updates=45, state_dict={}), 4, 5)
    assert ck.find_resume(str(tmp_path)).endswith("recovery-4-5.pth.tar")
    (tmp_path / "recovery-4-5.pth.tar").write_bytes(b"garbage")  # unreadable: fall back to last
    assert ck.find_resume(str(tmp_path)).endswith("last.pth.tar")
    with pytest.raises(ck.CheckpointError):
        ck.load_checkpoint(str(tmp_path / "recovery-4-5.pth.tar"))


def _write_idx(path, array: np.ndarray, magic: int) -> None:
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_dataset_on_disk(tmp_path):
    """``--dataset torch/mnist`` reads the files torchvision keeps, with no download."""
    from visionzoo.engine.data import build_source, check_data_args
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for prefix, n in (("train", 12), ("t10k", 4)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.randint(0, 255, (n, 28, 28)), 2051)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.randint(0, 10, (n,)), 2049)
    check_data_args("torch/mnist", str(tmp_path), ["train", "validation"])
    train, val = build_source("torch/mnist", str(tmp_path), "train"), build_source("torch/mnist", str(tmp_path),
                                                                                   "validation")
    assert (len(train), len(val), len(train.classes)) == (12, 4, 10)
    img, target = train.load(0)
    assert img.size == (28, 28) and 0 <= target < 10
    with pytest.raises(UsageError, match="dataset-download"):
        build_source("torch/cifar10", str(tmp_path), "train")
