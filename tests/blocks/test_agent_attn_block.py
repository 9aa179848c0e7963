"""AgentAttn against a plain transcription of the official AgentAttention forward (written here from
the paper's code, with the same weights) at the build size, on every backend that runs here;
any map size and aspect ratio; the bias cache (per map, rebuilt after an optimizer step); errors."""
import pytest
import torch
import torch.nn.functional as F

from visionzoo.blocks import _create
from visionzoo.blocks.agent_attn import AgentAttn
from visionzoo.ops import _backend

from ..ops._backend_tester import device_for


def _official(m: AgentAttn, x: torch.Tensor) -> torch.Tensor:
    """The official forward on ``x [b, n, c]`` (square build-time map, sr_ratio 1), step by step:
    biases interpolated and repeated over the batch, two softmax attentions, dwc on v, proj."""
    b, n, c = x.shape
    h, w = m.map_size
    heads, hd, na = m.num_heads, c // m.num_heads, m.agent_num
    q, k, v = m.qkv(x).reshape(b, n, 3, c).permute(2, 0, 1, 3)
    agent = F.adaptive_avg_pool2d(q.reshape(b, h, w, c).permute(0, 3, 1, 2), m.pool_size)
    agent = agent.reshape(b, c, -1).permute(0, 2, 1).reshape(b, na, heads, hd).permute(0, 2, 1, 3)
    q, k, v = (t.reshape(b, n, heads, hd).permute(0, 2, 1, 3) for t in (q, k, v))
    pb1 = F.interpolate(m.an_bias, size=(h, w), mode="bilinear").reshape(1, heads, na, -1).repeat(b, 1, 1, 1)
    pb2 = (m.ah_bias + m.aw_bias).reshape(1, heads, na, -1).repeat(b, 1, 1, 1)
    agent_v = ((agent * m.scale) @ k.transpose(-2, -1) + pb1 + pb2).softmax(-1) @ v
    ab1 = F.interpolate(m.na_bias, size=(h, w), mode="bilinear").reshape(1, heads, na, -1).permute(0, 1, 3, 2)
    ab2 = (m.ha_bias + m.wa_bias).reshape(1, heads, -1, na)
    out = ((q * m.scale) @ agent.transpose(-2, -1) + ab1.repeat(b, 1, 1, 1) + ab2.repeat(b, 1, 1, 1)).softmax(-1)
    out = (out @ agent_v).transpose(1, 2).reshape(b, n, c)
    v = v.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
    out = out + m.dwc(v).permute(0, 2, 3, 1).reshape(b, n, c)
    return m.proj(out)


def _block(backend=None, dim=16, heads=2, size=(6, 6), agents=9, seed=0):
    torch.manual_seed(seed)
    m = AgentAttn(dim, heads, map_size=size, agent_num=agents, backend=backend)
    with torch.no_grad():
        for name in ("an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias"):
            getattr(m, name).normal_(0, 0.5)  # larger than the init, so a misplaced bias shows
    return m


def _runnable(backend):
    why = _backend.can_run("agent_attn", backend, *[torch.zeros(1, 1, 1, 1)] * 3)
    if why is not None:
        pytest.skip(f"backend {backend!r} cannot run here: {why}")


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("size,agents,heads", [((6, 6), 9, 2), ((7, 7), 49, 1), ((8, 8), 4, 4)])
def test_matches_official_forward(backend, size, agents, heads):
    _runnable(backend)
    m = _block(backend, heads=heads, size=size, agents=agents)
    x = torch.randn(2, *size, 16)
    want = _official(m, x.reshape(2, -1, 16)).reshape(2, *size, 16)
    for grad in (False, True):  # cached (eval, no grad) and rebuilt (autograd) biases
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(m(x), want, atol=1e-5, rtol=1e-5)


def test_gradients_match_official():
    m = _block("cpu")
    x = torch.randn(2, 6, 6, 16)
    ours = torch.autograd.grad(m(x).square().sum(), list(m.parameters()))
    ref = torch.autograd.grad(_official(m, x.reshape(2, 36, 16)).square().sum(), list(m.parameters()))
    for (name, _), a, b in zip(m.named_parameters(), ours, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize("size", [(5, 9), (11, 4), (1, 1), (2, 3), (13, 13)])
def test_any_map_size(size):
    m = _block("cpu")
    x = torch.randn(2, *size, 16, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in m.parameters())
    with torch.no_grad():
        torch.testing.assert_close(m(x), y.detach())  # the cached biases of this map give the same result


def test_factorised_biases_resized_along_their_axis():
    m = _block(size=(4, 6))
    kv, q = m.build_biases(8, 3)
    assert kv.shape == (2, 9, 24) and q.shape == (2, 24, 9)
    with torch.no_grad():
        ah = F.interpolate(m.ah_bias[0].reshape(18, 1, 4), size=8, mode="linear").reshape(2, 9, 8, 1)
        aw = F.interpolate(m.aw_bias[0].reshape(18, 1, 6), size=3, mode="linear").reshape(2, 9, 1, 3)
        an = F.interpolate(m.an_bias, size=(8, 3), mode="bilinear")
        torch.testing.assert_close(kv, (an + ah + aw).reshape(2, 9, 24))


def test_bias_cache_follows_parameters():
    m = _block("cpu")
    x = torch.randn(1, 6, 6, 16)
    with torch.no_grad():
        before = m(x)
        assert m(x).equal(before) and len(m._bias_cache) == 1
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    m(x).square().sum().backward()
    opt.step()
    with torch.no_grad():
        after = m(x)
        torch.testing.assert_close(after, _official(m, x.reshape(1, 36, 16)).reshape(1, 6, 6, 16),
                                   atol=1e-5, rtol=1e-5)
    assert not after.equal(before)
    with torch.no_grad():
        m(torch.randn(1, 5, 7, 16))
        m.double()(x.double())
    assert len(m._bias_cache) == 1  # .double() dropped the float32 entries


def test_cache_from_inference_mode_serves_frozen_autograd():
    """Biases cached under inference_mode are not reused where autograd records (a frozen block with an
    input that requires grad): inference tensors cannot be saved for backward (the Triton op saves the biases)."""
    _runnable("triton")
    dev = device_for("triton")
    m = _block("triton").requires_grad_(False).to(dev)
    x = torch.randn(1, 6, 6, 16, device=dev)
    with torch.inference_mode():
        want = m(x)
    xg = x.clone().requires_grad_()
    y = m(xg)
    y.sum().backward()
    torch.testing.assert_close(y.detach(), want)
    assert torch.isfinite(xg.grad).all() and len(m._bias_cache) == 2


def test_token_mixer_table():
    m = _create.create_token_mixer("agent", 16, 2, map_size=(6, 6), agent_num=9, proj_drop=0.1)
    assert isinstance(m, AgentAttn)
    assert {n for n, _ in m.named_parameters()} == {
        "qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "dwc.weight", "dwc.bias",
        "an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias"}
    assert m.ah_bias.shape == (1, 2, 9, 6, 1) and m.wa_bias.shape == (1, 2, 1, 6, 9)


@pytest.mark.parametrize("kwargs,match", [
    (dict(agent_num=10), "agent_num must be a perfect square"),
    (dict(attn_drop=0.1), "attn_drop"),
    (dict(num_heads=3), "divisible by num_heads"),
    (dict(map_size=(0, 4)), "map_size"),
])
def test_bad_arguments_raise(kwargs, match):
    args = dict(dim=16, num_heads=2, map_size=(6, 6)) | kwargs
    with pytest.raises(ValueError, match=match):
        AgentAttn(args.pop("dim"), args.pop("num_heads"), **args)


def test_compiles_fullgraph_like_eager():
    """torch.compile traces the whole block (the bias cache steps aside while compiling) with the
    same output and gradients."""
    _backend.preload()  # compile cannot trace a first-time import
    m = _block("cpu")
    x = torch.randn(2, 5, 7, 16, requires_grad=True)
    y = m(x)
    grads = torch.autograd.grad(y.square().sum(), [x, m.an_bias, m.wa_bias])
    torch._dynamo.reset()
    yc = torch.compile(m, fullgraph=True, backend="aot_eager")(x)
    grads_c = torch.autograd.grad(yc.square().sum(), [x, m.an_bias, m.wa_bias])
    torch.testing.assert_close(yc, y)
    for a, b in zip(grads_c, grads):
        torch.testing.assert_close(a, b)


def test_bfloat16_block_follows_float32():
    m = _block("cpu").eval()
    x = torch.randn(2, 7, 5, 16)
    with torch.no_grad():
        want = m(x)
        got = m.to(torch.bfloat16)(x.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.1)
