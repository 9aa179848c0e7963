"""Test-session setup shared by every test file.

Triton kernels are tested on CPU tensors through Triton's interpreter, which must be switched on
before any kernel module is imported; doing it here (conftest is imported before collection)
covers every test process, xdist workers included. On a machine with CUDA the real kernels run.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# xdist runs one worker per core: intra-op threads on top would oversubscribe the CPU several times
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

import pytest  # noqa: E402

from visionzoo import _env  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if _env.extended_tests():
        return
    skip = pytest.mark.skip(reason="extended tier: set VISIONZOO_EXTENDED_TESTS=1 (make test-extended)")
    for item in items:
        if "extended" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
