"""Progress reporting: a tqdm bar (images/s, ETA) on an interactive terminal, periodic log lines otherwise."""
from __future__ import annotations

import logging
import sys
import time

__all__ = ["Progress", "format_seconds"]


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """``update(samples, **metrics)`` once per batch; ``close()`` at the end.

    Only the primary process reports. ``interactive=None`` means "if stderr is a terminal".
    """

    def __init__(self, total: int, desc: str, logger: logging.Logger, enabled: bool = True,
                 interactive: bool | None = None, log_interval: int = 50):
        self.total, self.desc, self.logger, self.enabled = total, desc, logger, enabled
        self.log_interval = log_interval
        self.count, self.samples, self.start = 0, 0, time.perf_counter()
        interactive = sys.stderr.isatty() if interactive is None else interactive
        self.bar = None
        if enabled and interactive:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True, leave=False, file=sys.stderr)

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.samples / elapsed if elapsed > 0 else 0.0

    def update(self, samples: int, **metrics) -> None:
        self.count += 1
        self.samples += samples
        if not self.enabled:
            return
        text = " ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
        if self.bar is not None:
            self.bar.set_postfix_str(f"{text} {self.rate:.0f} img/s", refresh=False)
            self.bar.update(1)
        elif self.count % self.log_interval == 0 or self.count == self.total:
            elapsed = time.perf_counter() - self.start
            eta = elapsed / self.count * (self.total - self.count)
            width = len(str(self.total))
            self.logger.info("%s [%*d/%d] %s %.0f img/s eta %s", self.desc, width, self.count, self.total, text,
                             self.rate, format_seconds(eta))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)
