"""The public op API: every front door importable from ``visionzoo.ops``, documented with shapes,
and importing the package loads no Triton code."""
import inspect
import subprocess
import sys

import pytest

import visionzoo.ops as ops

FRONT_DOORS = ("na1d", "na2d", "bra", "bra_routing", "halo_attn", "lka", "linear_attn", "agent_attn")


def test_front_doors_import():
    from visionzoo.ops import bra, bra_routing, halo_attn, lka, na1d, na2d  # noqa: F401


def test_all_lists_every_front_door_and_resolves():
    assert set(FRONT_DOORS) | {"use_backend", "current_backend", "BACKENDS", "BackendUnavailable",
                               "triton_unavailable", "swin_rpb_to_na", "na_rpb_to_swin",
                               "partition"} == set(ops.__all__)
    for name in ops.__all__:
        assert getattr(ops, name) is not None, name


@pytest.mark.parametrize("name", FRONT_DOORS)
def test_front_door_documents_shapes(name):
    doc = inspect.getdoc(getattr(ops, name)) or ""
    assert "[B, " in doc, f"{name}'s docstring gives no [B, ...] shapes"


def test_triton_available_is_a_deprecated_alias():
    from visionzoo.ops import _backend
    assert _backend.triton_available is _backend.triton_unavailable


def _run(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_import_loads_no_triton_code():
    """Triton itself may already be imported by torch / timm (``import timm`` does), so what can be
    checked honestly is that visionzoo loads none of its own Triton modules on import."""
    out = _run("import sys, visionzoo.ops; print(sorted(m for m in sys.modules if m.startswith('visionzoo') "
               "and 'triton' in m))")
    assert out.strip() == "[]", out


def test_works_without_triton():
    """With Triton unimportable, the package imports, auto dispatch runs, and asking for the triton
    backend raises BackendUnavailable with the reason (a missing Triton fails when called)."""
    out = _run(
        "import sys; sys.modules['triton'] = None\n"
        "import torch, visionzoo.ops as ops\n"
        "assert 'cannot be imported' in ops.triton_unavailable()\n"
        "q = torch.zeros(1, 4, 4, 1, 8)\n"
        "assert ops.halo_attn(q, q, q, 2, 1).shape == q.shape\n"
        "try:\n"
        "    ops.bra(q, q, q, 2, 1, backend='triton')\n"
        "except ops.BackendUnavailable as e:\n"
        "    print('raised:', e)\n")
    assert "raised:" in out and "triton cannot be imported" in out, out
