"""Checkpoints: atomic writes, the full training state, timm's file layout, resume discovery.

Files in the run directory (timm's names):
* ``last.pth.tar`` after every epoch; ``checkpoint-<epoch>.pth.tar`` for the best ``--checkpoint-hist``
  epochs by the eval metric; ``model_best.pth.tar`` (hard links where the filesystem allows);
* ``recovery-<epoch>-<batch>.pth.tar`` every ``--recovery-interval`` optimizer updates and when a
  SIGTERM/SIGINT arrives (only the newest is kept; removed once the epoch's ``last`` exists).

Every file is written to a temporary name, flushed to disk and renamed over the target, so a kill
at any moment leaves either the previous file or the new one, never a truncated one.

The dict holds timm's keys (``arch``, ``state_dict``, ``state_dict_ema``, ``optimizer``, ``epoch``,
``metric``, ``version``, ``args``) plus ``scheduler``, ``scaler``, ``next_epoch`` / ``next_batch``,
``num_updates``, the running epoch meters, every rank's RNG states and the saver history. All values
are tensors or plain Python types, so ``torch.load(weights_only=True)`` reads it.
"""
from __future__ import annotations

import glob
import logging
import math
import os
import random
import re
import shutil

import numpy as np
import torch

from ..convert import CheckpointError, describe_load_error

__all__ = ["atomic_save", "load_checkpoint", "capture_rng", "restore_rng", "CheckpointSaver", "find_resume",
           "remove_stale_temporaries", "CHECKPOINT_VERSION"]

_logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 2  # timm writes 2 as well
_EXT = ".pth.tar"


def atomic_save(obj, path: str) -> None:
    """``torch.save`` to ``path`` through a temporary file and ``os.replace``."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(os.path.dirname(path) or ".")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_link(src: str, dst: str) -> None:
    """``dst`` becomes the same file as ``src`` (hard link, or a copy), atomically."""
    tmp = f"{dst}.tmp-{os.getpid()}"
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint (CPU tensors); a corrupt or foreign file raises :class:`CheckpointError`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unpickling failure as a bad checkpoint
        raise CheckpointError(f"checkpoint {path!r} could not be read ({describe_load_error(e)})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path!r} is a {type(ckpt).__name__}, not a dict")
    return ckpt


def is_training_checkpoint(ckpt: dict) -> bool:
    """Written by visionzoo's train.py (architecture, args and training state inside)."""
    return isinstance(ckpt, dict) and "arch" in ckpt and "state_dict" in ckpt and "visionzoo" in ckpt


# ---- RNG state ---------------------------------------------------------------------------------
def capture_rng() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = dict(python=random.getstate(), torch=torch.get_rng_state(),
                 numpy=[kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)])
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- the saver ---------------------------------------------------------------------------------
class CheckpointSaver:
    """Keeps ``last``, the top-``max_history`` epochs, ``model_best`` and the newest recovery file."""

    def __init__(self, out_dir: str, decreasing: bool = False, max_history: int = 10):
        self.out_dir, self.decreasing, self.max_history = out_dir, decreasing, max(1, max_history)
        self.history: list[list] = []  # [metric, epoch], best first
        self.best: list | None = None  # [metric, epoch]

    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name + _EXT)

    def state_dict(self) -> dict:
        return dict(history=[list(h) for h in self.history], best=list(self.best) if self.best else None)

    def load_state_dict(self, state: dict) -> None:
        self.history = [list(h) for h in state.get("history", [])]
        self.best = list(state["best"]) if state.get("best") else None

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.decreasing else a > b

    def save_epoch(self, state: dict, epoch: int, metric: float | None) -> bool:
        """Write ``last`` (+ ``checkpoint-<epoch>``, ``model_best``); True if this epoch is the new best."""
        if metric is not None and not math.isfinite(metric):
            _logger.warning("epoch %d: eval metric %s is not finite: not ranked (never model_best)", epoch, metric)
            metric = None
        new_best = metric is not None and (self.best is None or self._better(metric, self.best[0]))
        keep = metric is not None and (len(self.history) < self.max_history
                                       or self._better(metric, self.history[-1][0]))
        history = [h for h in self.history if h[1] != epoch]
        if keep:
            history = sorted(history + [[metric, epoch]], key=lambda h: h[0], reverse=not self.decreasing)
        dropped, history = history[self.max_history:], history[:self.max_history]
        best = [metric, epoch] if new_best else self.best
        state["saver"] = dict(history=history, best=best)
        last = self.path("last")
        atomic_save(state, last)
        if keep:
            _atomic_link(last, self.path(f"checkpoint-{epoch}"))
        if new_best:
            _atomic_link(last, self.path("model_best"))
        for _, old_epoch in dropped:
            _remove(self.path(f"checkpoint-{old_epoch}"))
        self.history, self.best = history, best
        self.remove_recovery()
        return new_best

    def save_recovery(self, state: dict, epoch: int, batch: int) -> str:
        state["saver"] = self.state_dict()
        path = self.path(f"recovery-{epoch}-{batch}")
        atomic_save(state, path)
        self.remove_recovery(keep=path)
        return path

    def remove_recovery(self, keep: str | None = None) -> None:
        for p in glob.glob(os.path.join(self.out_dir, "recovery-*" + _EXT)):
            if p != keep:
                _remove(p)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def remove_stale_temporaries(out_dir: str) -> list[str]:
    """Remove the ``*.tmp-<pid>`` files a killed writer left in a run directory (``last.pth.tar.tmp-123``,
    ``summary.csv.tmp-123``...): written to, never renamed, so never a complete file."""
    removed = []
    for p in glob.glob(os.path.join(out_dir, "*.tmp-*")):
        if re.fullmatch(r".+\.tmp-\d+", os.path.basename(p)) and os.path.isfile(p):
            _remove(p)
            removed.append(p)
    if removed:
        _logger.warning("removed %d unfinished temporary file(s) of an interrupted write: %s", len(removed),
                        ", ".join(os.path.basename(p) for p in removed))
    return removed


def find_resume(path: str) -> str:
    """A checkpoint file, or in a run directory the newest readable ``last`` / ``recovery-*`` file."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--resume {path!r} is neither a checkpoint file nor a run directory")
    names = [os.path.basename(p) for p in glob.glob(os.path.join(path, "*" + _EXT))]
    primary = [n for n in names if re.fullmatch(r"(last|recovery-\d+-\d+)\.pth\.tar", n)]
    history = [n for n in names if re.fullmatch(r"checkpoint-\d+\.pth\.tar", n)]
    best = None
    for group in (primary, history):  # checkpoint-N are older copies of last: only a fallback
        best_key = None
        for name in group:
            p = os.path.join(path, name)
            try:
                ckpt = load_checkpoint(p)
            except (CheckpointError, FileNotFoundError) as e:
                _logger.warning("ignoring unreadable checkpoint %s: %s", p, e)
                continue
            key = (int(ckpt.get("num_updates", -1)), os.path.getmtime(p))
            if best_key is None or key > best_key:
                best, best_key = p, key
            del ckpt
        if best is not None:
            break
    if best is None:
        raise FileNotFoundError(f"--resume {path!r}: no readable last/recovery checkpoint in that directory")
    return best
