"""FLatten models under CPU ``torch.autocast`` (fp16 and bf16): forward and backward of ``flatten_pvt_tiny`` and
``flatten_swin_tiny`` stay finite when the activations entering every focused linear attention are scaled
x1e2 and x1e4 (a forward pre-hook), and match the fp32 result within the dtype's tolerance
(``visionzoo.ops._testing.TOLERANCES``, as a relative L2 error over the whole output / every gradient). A
control shows the test bites: the same models with the original (pre-May-2024, unnormalised) FLatten
formulation written plainly produce non-finite logits under fp16 on the same inputs.

Full-size models at 224 for the forward (stage-1 maps 56x56); the backward runs at 112 to stay fast."""
import contextlib
import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import visionzoo
from visionzoo.blocks.focused_linear_attn import FocusedLinearAttn
from visionzoo.ops._testing import TOLERANCES

NAMES = ["flatten_pvt_tiny", "flatten_swin_tiny"]
DTYPES = [torch.float16, torch.bfloat16]
SCALES = [1e2, 1e4]


@functools.lru_cache(maxsize=None)
def _built(name: str) -> nn.Module:
    torch.manual_seed(0)
    return visionzoo.create_model(name, num_classes=10).eval()


@contextlib.contextmanager
def _stressed(name: str, scale: float):
    """The model with the input of every focused linear attention scaled by ``scale`` (q, k and v grow with it)."""
    model = _built(name)
    hooks = [m.register_forward_pre_hook(lambda mod, args: (args[0] * scale,) + args[1:])
             for m in model.modules() if isinstance(m, FocusedLinearAttn)]
    try:
        yield model
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30)).item()


def _run(model, x, dtype):
    if dtype is None:
        return model(x)
    with torch.autocast("cpu", dtype=dtype):
        return model(x)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_forward_finite_and_close_to_fp32(name, dtype, scale):
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with _stressed(name, scale) as model, torch.no_grad():
        want = _run(model, x, None)
        got = _run(model, x, dtype)
    assert torch.isfinite(want).all()
    assert torch.isfinite(got).all(), f"{name} x{scale:g} under {dtype} autocast: non-finite logits"
    rtol = TOLERANCES[dtype]["out"][1]
    assert _rel_err(got, want) <= rtol, (name, dtype, scale, _rel_err(got, want))


def _grads(model: nn.Module, x: torch.Tensor, w: torch.Tensor, dtype, loss_scale: float = 1.0) -> dict:
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    ((_run(model, x, dtype).float() * w).sum() * loss_scale).backward()
    return {"input": x.grad / loss_scale,
            **{n: p.grad / loss_scale for n, p in model.named_parameters() if p.grad is not None}}


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_backward_finite_and_close_to_fp32(name, dtype, scale):
    x = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    w = torch.randn(1, 10, generator=torch.Generator().manual_seed(3))
    with _stressed(name, scale) as model:
        want = _grads(model, x, w, None)
        if dtype == torch.bfloat16:  # fp32's range: trained without loss scaling
            got = _grads(model, x, w, dtype)
        else:
            # fp16 training scales the loss (torch.amp.GradScaler): unscaled, the gradients of the x1e4 attention
            # inputs underflow fp16 (Swin: relative error ~0.2 at the stem, measured). As GradScaler does, back
            # off from a large scale until every gradient is finite (by 8x per try to keep the test short).
            for loss_scale in (2.0 ** 10, 2.0 ** 7, 2.0 ** 4, 2.0, 1.0):
                got = _grads(model, x, w, dtype, loss_scale)
                if all(torch.isfinite(g).all() for g in got.values()):
                    break
    rtol = TOLERANCES[dtype]["grad"][1]
    bad = [n for n, g in got.items() if not torch.isfinite(g).all()]
    assert not bad, f"{name} x{scale:g} under {dtype} autocast: non-finite gradients of {bad[:5]}"
    assert set(got) == set(want)
    errors = {n: _rel_err(g, want[n]) for n, g in got.items() if want[n].norm() > 0}
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    # every parameter's gradient (the attention's included) and the input gradient
    assert errors["input"] <= rtol and all(e <= 2 * rtol for e in errors.values()), worst


class _Unnormalised(nn.Module):
    """The original FLatten formulation (before the May-2024 fix), written plainly on a FocusedLinearAttn's
    parameters (``sr_ratio == 1``): ``z = 1 / (q . sum_j k_j)``, ``kv = K^T V`` summed unscaled, in the
    autocast dtype."""

    def __init__(self, attn: FocusedLinearAttn):
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn
        B, H, W, C = x.shape
        heads, N = a.num_heads, H * W
        q, k, v = a.qkv(x.reshape(B, N, C)).chunk(3, -1)
        k = k + a.positional_encoding
        scale = F.softplus(a.scale)
        q, k = (F.relu(q) + 1e-6) / scale, (F.relu(k) + 1e-6) / scale
        qn, kn = q.norm(dim=-1, keepdim=True), k.norm(dim=-1, keepdim=True)
        q, k = q ** a.focusing_factor, k ** a.focusing_factor
        q, k = q / q.norm(dim=-1, keepdim=True) * qn, k / k.norm(dim=-1, keepdim=True) * kn
        q, k, v = (t.reshape(B, N, heads, -1).transpose(1, 2) for t in (q, k, v))
        z = 1 / (q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
        out = (q @ (k.transpose(-2, -1) @ v) * z).transpose(1, 2).reshape(B, N, C)
        dw = a.dwc(v.reshape(B * heads, H, W, -1).permute(0, 3, 1, 2)).reshape(B, C, N).transpose(1, 2)
        return a.proj(out + dw).reshape(B, H, W, C)


@pytest.mark.parametrize("name", NAMES)
def test_control_unnormalised_formulation_overflows(name):
    """Same model, same x1e2 stress, fp16 autocast: the unnormalised formulation is finite in fp32 but not in
    fp16 (so the finiteness assertions above can fail), while ours stays finite."""
    torch.manual_seed(0)
    model = visionzoo.create_model(name, num_classes=10).eval()  # its own copy: the mixers are swapped below
    for m in model.modules():
        if isinstance(m, FocusedLinearAttn):
            m.register_forward_pre_hook(lambda mod, args: (args[0] * 1e2,) + args[1:])
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = _run(model, x, torch.float16)
        for blk in (b for s in model.stages for b in s.blocks if isinstance(b.attn, FocusedLinearAttn)):
            hooks = blk.attn._forward_pre_hooks
            blk.attn = _Unnormalised(blk.attn)
            blk.attn._forward_pre_hooks.update(hooks)
        plain32 = _run(model, x, None)
        plain16 = _run(model, x, torch.float16)
    assert torch.isfinite(ours).all() and torch.isfinite(plain32).all()
    assert not torch.isfinite(plain16).all()
