"""The one place visionzoo reads environment variables.

Every switch a user or CI can flip from the environment is listed here, so that grepping for
``os.environ`` in the package finds exactly this file.
"""
from __future__ import annotations

import os

__all__ = ["backend_override", "extended_tests", "triton_interpret"]


def backend_override() -> str | None:
    """``VISIONZOO_BACKEND``: force a backend (``reference``, ``cpu`` or ``triton``) for every op."""
    value = os.environ.get("VISIONZOO_BACKEND", "").strip().lower()
    return value or None


def triton_interpret() -> bool:
    """``TRITON_INTERPRET=1``: Triton runs kernels on CPU tensors (testing without a GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0", "false", "False")


def extended_tests() -> bool:
    """``VISIONZOO_EXTENDED_TESTS=1``: run the slow sweeps that the default test tier leaves out."""
    return os.environ.get("VISIONZOO_EXTENDED_TESTS", "0").strip() not in ("", "0", "false", "False")
