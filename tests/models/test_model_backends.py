"""Whole models give the same numbers from every backend of their ops (reference, cpu, and the
Triton kernels: on CUDA where there is a GPU, else interpreted on CPU), forward and backward;
switching never changes the state."""
import pytest
import torch

import visionzoo
from visionzoo.ops import triton_unavailable

from . import create_tiny

#: one reduced model per family that runs a dispatched op
MODELS = ["dinat_tiny", "dinat_s_tiny", "dinat_isotropic_small", "maxvit_tiny", "halonet26t", "biformer_tiny",
          "van_b0", "flatten_pvt_tiny", "flatten_pvt_v2_b0", "flatten_swin_tiny", "agent_pvt_tiny", "agent_swin_tiny",
          "agent_deit_tiny", "agent_cswin_tiny", "flatten_cswin_tiny"]
pytestmark = pytest.mark.skipif(triton_unavailable() is not None, reason=f"{triton_unavailable()}")
#: where each backend runs: Triton on the GPU when there is one (its kernels need CUDA tensors there)
DEVICES = {"reference": "cpu", "cpu": "cpu", "triton": "cuda" if torch.cuda.is_available() else "cpu"}


def _run(model, x, backend):
    model.zero_grad(set_to_none=True)
    model.to(DEVICES[backend])
    with visionzoo.use_backend(backend):
        out = model(x.to(DEVICES[backend]))
        out.square().mean().backward()
    grads = {n: p.grad.cpu() for n, p in model.named_parameters() if p.requires_grad}
    model.cpu()
    return out.detach().cpu(), grads


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
