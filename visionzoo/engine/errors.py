"""Errors the CLIs turn into a one-line message and an exit status instead of a traceback."""
from __future__ import annotations

__all__ = ["UsageError", "NonFiniteLossError", "TrainingInterrupted", "DataError"]


class UsageError(ValueError):
    """A bad argument or combination of arguments, found before any work (exit status 2)."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch, batch and optimizer update."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM / SIGINT arrived; a recovery checkpoint was written at the step boundary."""


class DataError(RuntimeError):
    """Too many samples of an epoch could not be read or transformed (none at all, or more than
    ``--max-skipped``); raised before that epoch's checkpoint is written."""
