"""CrossShapedWindowAttn (CSWin stripes + LePE on na2d) against the official formulation written plainly (window
partition, LePE convolved per window, softmax attention), extended to maps the stripes do not divide (zero padding
at the bottom / right, padding keys masked, output cropped): every backend (reference, cpu, Triton interpreted),
output and gradients; the per-window depthwise conv; FLatten-CSWin's focused linear attention + LePE."""
import math

import pytest
import torch
import torch.nn.functional as F

from visionzoo.blocks.cswin_attn import CrossShapedWindowAttn, FocusedLinearAttnLePE, windowed_dwconv
from visionzoo.blocks.focused_linear_attn import FocusedLinearAttn


def plain_cswin(m: CrossShapedWindowAttn, x: torch.Tensor) -> torch.Tensor:
    """The official ``CSWinBlock`` attention (``qkv`` -> ``LePEAttention`` branches -> ``proj``), with whole
    stripes made by zero padding (never clamped to the map) and the padding keys masked."""
    B, H, W, C = x.shape
    nb = 1 if m.global_attn else 2
    c, heads = C // nb, m.num_heads // nb
    d = c // heads
    sw = m.split_size
    windows = [(H, W)] if m.global_attn else [(H, sw), (sw, W)]  # official idx 0: H_sp = map, W_sp = split
    qkv = F.linear(x, m.qkv.weight, m.qkv.bias)
    outs = []
    for i, (wh, ww) in enumerate(windows):
        part = slice(i * c, (i + 1) * c)
        hp, wp = math.ceil(H / wh) * wh, math.ceil(W / ww) * ww
        q, k, v = (F.pad(qkv[..., j * C:(j + 1) * C][..., part], (0, 0, 0, wp - W, 0, hp - H)) for j in range(3))
        real = F.pad(torch.ones(H, W, dtype=torch.bool), (0, wp - W, 0, hp - H))

        def img2windows(t):  # [B, hp, wp, ...] -> [B * n, wh * ww, ...]
            t = t.reshape(B, hp // wh, wh, wp // ww, ww, *t.shape[3:]).transpose(2, 3)
            return t.reshape(-1, wh * ww, *t.shape[5:])
        qw, kw, vw = (img2windows(t).reshape(-1, wh * ww, heads, d).transpose(1, 2) for t in (q, k, v))
        keep = img2windows(real[None].expand(B, -1, -1)).reshape(-1, 1, 1, wh * ww)
        lepe = F.conv2d(img2windows(v).reshape(-1, wh, ww, c).permute(0, 3, 1, 2), m.lepe.weight[part],
                        m.lepe.bias[part], padding=1, groups=c)
        lepe = lepe.reshape(-1, heads, d, wh * ww).transpose(2, 3)
        attn = ((qw * m.scale) @ kw.transpose(-2, -1)).masked_fill(~keep, float("-inf")).softmax(-1)
        out = (attn @ vw + lepe).transpose(1, 2).reshape(B, hp // wh, wp // ww, wh, ww, c)
        outs.append(out.transpose(2, 3).reshape(B, hp, wp, c)[:, :H, :W])
    return F.linear(torch.cat(outs, -1), m.proj.weight, m.proj.bias)


def _module(split: int, global_attn: bool = False, dim: int = 32, heads: int = 4, dtype=torch.float64):
    torch.manual_seed(0)
    m = CrossShapedWindowAttn(dim, heads, split_size=split, global_attn=global_attn, dtype=dtype)
    with torch.no_grad():
        for p in m.parameters():  # away from the near-uniform default init, so mistakes show
            p.normal_(0, 0.5)
    return m


CASES = [  # (map, split, global): divisible, stripes not dividing the map, wider than the map, 1-wide, global
    ((14, 14), 7, False), ((13, 17), 7, False), ((5, 3), 2, False), ((4, 6), 7, False), ((9, 10), 1, False),
    ((7, 9), 7, True),
]


@pytest.mark.parametrize("size,split,global_attn", CASES, ids=str)
def test_reference_backend_equals_plain_formulation(size, split, global_attn):
    """float64, output and gradients of the input and every parameter."""
    m = _module(split, global_attn)
    m.backend = "reference"
    x = torch.randn(2, *size, 32, dtype=torch.float64, requires_grad=True)
    out = m(x)
    want = plain_cswin(m, x)
    torch.testing.assert_close(out, want, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(out)
    params = [x, *m.parameters()]
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


#: the Triton interpreter takes ~1 min on the larger maps of the shared 2-core host: those in the extended tier
_TRITON_FAST = {((5, 3), 2, False), ((4, 6), 7, False), ((6, 5), 1, False), ((7, 9), 7, True)}
BACKEND_CASES = [pytest.param(backend, *case, id=f"{backend}-{case}",
                              marks=[pytest.mark.extended] if backend == "triton" and case not in _TRITON_FAST else [])
                 for backend in ("cpu", "triton") for case in CASES + [((6, 5), 1, False)]]


@pytest.mark.parametrize("backend,size,split,global_attn", BACKEND_CASES)
def test_backends_match_the_plain_formulation(backend, size, split, global_attn):
    """float32 on the cpu / Triton (interpreted without CUDA) backends against the float64 plain formulation:
    output, input and parameter gradients."""
    if backend == "triton":
        pytest.importorskip("triton", reason="Triton is not importable, so the triton backend cannot run")
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    m = _module(split, global_attn)
    x = torch.randn(2, *size, 32, dtype=torch.float64, requires_grad=True)
    want = plain_cswin(m, x)
    g = torch.randn_like(want)
    grads = torch.autograd.grad(want, [x, *m.parameters()], g)
    m32 = _module(split, global_attn, dtype=torch.float32).to(device)
    m32.load_state_dict(m.state_dict())
    m32.backend = backend
    x32 = x.detach().float().to(device).requires_grad_()
    out = m32(x32)
    got = torch.autograd.grad(out, [x32, *m32.parameters()], g.float().to(device))
    torch.testing.assert_close(out.double().cpu(), want, atol=2e-4, rtol=2e-4)
    for name, a, b in zip(["x", *dict(m.named_parameters())], got, grads):  # float32 sums: atol relative to scale
        torch.testing.assert_close(a.double().cpu(), b, atol=1e-5 * b.abs().max().item() + 1e-5, rtol=1e-3,
                                   msg=lambda s: f"d{name}: {s}")


def _per_window_conv(x, weight, bias, window):
    """Loop over the zero-padded windows, one conv each."""
    B, H, W, c = x.shape
    wh, ww = window
    hp, wp = math.ceil(H / wh) * wh, math.ceil(W / ww) * ww
    xp = F.pad(x, (0, 0, 0, wp - W, 0, hp - H))
    out = torch.zeros_like(xp)
    for i in range(0, hp, wh):
        for j in range(0, wp, ww):
            blk = xp[:, i:i + wh, j:j + ww].permute(0, 3, 1, 2)
            out[:, i:i + wh, j:j + ww] = F.conv2d(blk, weight, bias, padding=1, groups=c).permute(0, 2, 3, 1)
    return out[:, :H, :W]


@pytest.mark.parametrize("size,window", [((7, 9), (7, 1)), ((7, 9), (1, 9)), ((7, 9), (7, 2)), ((7, 9), (2, 9)),
                                         ((7, 9), (7, 9)), ((13, 13), (13, 7)), ((13, 13), (7, 13)),
                                         ((6, 8), (3, 4))], ids=str)
def test_windowed_dwconv_sees_no_neighbour_window(size, window):
    torch.manual_seed(0)
    x, w, b = torch.randn(2, *size, 6), torch.randn(6, 1, 3, 3), torch.randn(6)
    torch.testing.assert_close(windowed_dwconv(x, w, b, window), _per_window_conv(x, w, b, window))


def test_stripes_are_half_the_heads_each_way():
    """Branch 0 (first half of the channels) attends within columns, branch 1 within rows: with split 1, a
    change in one pixel reaches only its own column through branch 0 and its own row through branch 1."""
    m = _module(1, dim=8, heads=2, dtype=torch.float32).eval()
    with torch.no_grad():
        m.proj.weight.copy_(torch.eye(8))
        m.proj.bias.zero_()
        m.lepe.weight.zero_()
        x = torch.randn(1, 5, 6, 8)
        y = x.clone()
        y[0, 2, 3] += 1.0
        delta = (m(y) - m(x)).abs().sum(-1, keepdim=False)[0]  # [H, W]
        d0 = (m(y) - m(x))[0, ..., :4].abs().sum(-1)
        d1 = (m(y) - m(x))[0, ..., 4:].abs().sum(-1)
    assert (d0[:, [0, 1, 2, 4, 5]] == 0).all() and (d0[:, 3] > 0).all()
    assert (d1[[0, 1, 3, 4]] == 0).all() and (d1[2] > 0).all()
    assert (delta > 0).sum() == 5 + 6 - 1


def test_focused_linear_lepe_is_focused_linear_plus_lepe():
    torch.manual_seed(0)
    m = FocusedLinearAttnLePE(32, 2, map_size=(6, 5), backend="reference")
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    base = FocusedLinearAttn(32, 2, map_size=(6, 5), backend="reference")
    base.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("lepe.")})
    x = torch.randn(2, 7, 4, 32)  # another map: the positional encoding is interpolated in both
    v = m.qkv(x)[..., 64:]
    lepe = m.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    with torch.no_grad():
        torch.testing.assert_close(m(x), base(x) + F.linear(lepe, m.proj.weight), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dim=32, num_heads=3), "divisible by num_heads"),
    (dict(dim=30, num_heads=3), "num_heads even"),
    (dict(split_size=0), "split_size"),
    (dict(attn_drop=0.1), "attn_drop"),
])
def test_errors_name_the_argument(kwargs, match):
    args = dict(dim=32, num_heads=4) | kwargs
    with pytest.raises(ValueError, match=match):
        CrossShapedWindowAttn(args.pop("dim"), args.pop("num_heads"), **args)


def test_global_allows_odd_heads():
    m = CrossShapedWindowAttn(30, 3, global_attn=True)
    assert m(torch.randn(1, 5, 4, 30)).shape == (1, 5, 4, 30)


def test_cpu_fast_path_only_on_whole_windows(monkeypatch):
    """The cpu backend's whole windows go through the batched-GEMM path (so the backend tests above check it);
    maps the stripes do not divide, and the reference backend, go through na2d."""
    from visionzoo.blocks import cswin_attn

    calls = []
    real = cswin_attn._window_math
    monkeypatch.setattr(cswin_attn, "_window_math", lambda *a: calls.append(a[3]) or real(*a))
    m = _module(7, dtype=torch.float32)
    m.backend = "cpu"
    m(torch.randn(1, 14, 14, 32))
    assert calls == [(14, 7), (7, 14)]
    calls.clear()
    m(torch.randn(1, 13, 14, 32))  # vertical stripes (13, 7) are whole, horizontal (7, 14) rows are not
    assert calls == [(13, 7)]
    m.backend = "reference"
    calls.clear()
    m(torch.randn(1, 14, 14, 32))
    assert calls == []


@pytest.mark.parametrize("chunk_bytes", [1, 3 * 7 * 14 * 7 * 14 * 4, 1 << 30])
def test_cpu_inference_chunks_equal_the_autograd_path(monkeypatch, chunk_bytes):
    """Inference attends the windows chunk by chunk (one window per chunk, chunks not dividing the windows, one
    chunk): the result equals the autograd path's."""
    from visionzoo.blocks import cswin_attn

    monkeypatch.setattr(cswin_attn, "CHUNK_BYTES", chunk_bytes)
    m = _module(7, dtype=torch.float32)
    m.backend = "cpu"
    x = torch.randn(2, 14, 14, 32)
    want = m(x)
    assert want.requires_grad
    with torch.inference_mode():
        torch.testing.assert_close(m(x), want.detach(), atol=1e-6, rtol=1e-5)
