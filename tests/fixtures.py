"""Access to the official-code parity fixtures in ../shared/fixtures/official (beside the checkout)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1] / ".." / "shared"
OFFICIAL = ROOT / "fixtures" / "official"


def require_shared():
    if not OFFICIAL.is_dir():
        pytest.skip(f"official fixtures not found at {OFFICIAL} (CI provides ../shared beside the checkout)")


def load_fixture(name: str):
    """``(meta, tensors, official_state_dict)`` of fixture ``name`` (floats cast to float32)."""
    require_shared()
    meta = json.loads((OFFICIAL / f"{name}.json").read_text())
    tensors = load_file(str(OFFICIAL / f"{name}.safetensors"))
    sd = {k[len("state_dict."):]: (v.float() if v.is_floating_point() else v)
          for k, v in tensors.items() if k.startswith("state_dict.")}
    return meta, tensors, sd


def official_keys(variant: str) -> dict:
    require_shared()
    return json.loads((OFFICIAL / "keys" / f"{variant}.json").read_text())


def assert_matches_fixture(model, tensors, atol=1e-4, rtol=1e-4):
    """Logits, every stage (NCHW) and pre-logits of ``model`` equal the official outputs."""
    x = tensors["input"].float()
    model.eval()
    with torch.no_grad():
        final, taps = model.forward_intermediates(x)
        logits = model.forward_head(final)
        pre = model.forward_head(final, pre_logits=True)
    torch.testing.assert_close(logits, tensors["logits"], atol=atol, rtol=rtol, msg=lambda m: f"logits: {m}")
    torch.testing.assert_close(pre, tensors["pre_logits"], atol=atol, rtol=rtol, msg=lambda m: f"pre_logits: {m}")
    n = len([k for k in tensors if k.startswith("stage.")])
    assert len(taps) == n
    for i, tap in enumerate(taps):
        torch.testing.assert_close(tap, tensors[f"stage.{i}"], atol=atol, rtol=rtol, msg=lambda m: f"stage.{i}: {m}")
