"""Whole models give the same numbers from every backend of their ops (reference, cpu, and the
Triton kernels, interpreted on CPU), forward and backward; switching never changes the state."""
import pytest
import torch

import visionzoo
from visionzoo.ops._backend import triton_available

from . import create_tiny

#: one reduced model per family that runs a dispatched op
MODELS = ["dinat_tiny", "dinat_s_tiny", "dinat_isotropic_small", "maxvit_tiny", "halonet26t", "biformer_tiny"]
pytestmark = pytest.mark.skipif(triton_available() is not None, reason=f"{triton_available()}")


def _run(model, x, backend):
    model.zero_grad(set_to_none=True)
    with visionzoo.use_backend(backend):
        out = model(x)
        out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", [(32, 40), (61, 47)])
def test_backends_agree(name, size):
    model = create_tiny(name, num_classes=5).eval()
    x = torch.randn(1, 3, *size)
    keys = list(model.state_dict())
    ref_out, ref_grads = _run(model, x, "reference")
    for backend in ("cpu", "triton"):
        out, grads = _run(model, x, backend)
        torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=1e-4, msg=lambda m: f"{backend} output: {m}")
        for n, g in grads.items():
            torch.testing.assert_close(g, ref_grads[n], atol=1e-4, rtol=1e-3, msg=lambda m: f"{backend} d{n}: {m}")
    assert list(model.state_dict()) == keys
