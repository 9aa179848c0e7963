"""The one place visionzoo reads environment variables.

Every switch a user or CI can flip from the environment is listed here, so that grepping for
``os.environ`` in the package finds exactly this file.
"""
from __future__ import annotations

import os

__all__ = ["backend_override", "cpu_ext_enabled", "distributed_env", "extended_tests", "triton_interpret"]


def backend_override() -> str | None:
    """``VISIONZOO_BACKEND``: force a backend (``reference``, ``cpu`` or ``triton``) for every op."""
    value = os.environ.get("VISIONZOO_BACKEND", "").strip().lower()
    return value or None


def triton_interpret() -> bool:
    """``TRITON_INTERPRET=1``: Triton runs kernels on CPU tensors (testing without a GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0", "false", "False")


def cpu_ext_enabled() -> bool:
    """``VISIONZOO_CPU_EXT=0``: never build or use visionzoo's optional C++ CPU kernels
    (:mod:`visionzoo.ops._cpu`); ATen's kernels run instead, with the same results."""
    return os.environ.get("VISIONZOO_CPU_EXT", "1").strip() != "0"


def extended_tests() -> bool:
    """``VISIONZOO_EXTENDED_TESTS=1``: run the slow sweeps that the default test tier leaves out."""
    return os.environ.get("VISIONZOO_EXTENDED_TESTS", "0").strip() not in ("", "0", "false", "False")


def distributed_env() -> tuple[int, int, int]:
    """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` as set by ``torchrun``: ``(rank, world_size, local_rank)``;
    ``(0, 1, 0)`` when the process was not started by a distributed launcher."""
    def read(name: str, default: int) -> int:
        value = os.environ.get(name, "").strip()
        try:
            return int(value) if value else default
        except ValueError:
            raise ValueError(f"environment variable {name}={value!r} is not an integer") from None
    return read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0)
