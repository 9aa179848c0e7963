"""The training-curves PNG written beside ``summary.csv``: loss, top-1 / top-5, learning rate per epoch."""
from __future__ import annotations

import logging
import math
import os

__all__ = ["plot_summary"]

_logger = logging.getLogger(__name__)
_warned = False


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        try:
            y = float(r[key])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(y):
            xs.append(int(r["epoch"]))
            ys.append(y)
    return xs, ys


def plot_summary(rows: list[dict], path: str, title: str = "") -> bool:
    """Write the curves of ``rows`` (summary.csv records) to ``path``; False if matplotlib is missing."""
    global _warned
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        if not _warned:
            _logger.warning("matplotlib is not installed: no training-curves PNG (pip install 'visionzoo[train]')")
            _warned = True
        return False
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    panels = (("loss", (("train_loss", "train"), ("eval_loss", "eval"))),
              ("accuracy (%)", (("eval_top1", "top-1"), ("eval_top5", "top-5"))),
              ("learning rate", (("lr", "lr"),)))
    for ax, (label, keys) in zip(axes, panels):
        for key, name in keys:
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines and len(keys) > 1:
            ax.legend()
    if title:
        fig.suptitle(title)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return True
