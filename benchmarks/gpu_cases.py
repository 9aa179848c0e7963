"""What ``make gpu-check`` runs: per Triton op, its correctness cases and its speed cases.

Every op registered in :mod:`visionzoo.ops._backend` with a ``triton`` implementation needs an entry
in :data:`OPS` (``tests/test_gpu_check.py`` fails otherwise). An entry is

* ``cases``: :class:`Case` rows. ``build(device, dtype, batch)`` returns ``(fn, leaves)``:
  ``fn(*leaves, backend=...)`` is one op call and ``leaves`` the floating inputs whose gradients are
  checked. ``small`` rows are the interpreter-sized awkward shapes (the smoke mode runs only those);
  the others are model-scale stage shapes.
* ``speed``: :class:`SpeedCase` rows, each a model stage shape; ``build(device, dtype, batch)``
  returns ``{variant: (call, leaves)}`` with zero-argument-free calls ``call(*leaves)``. ``triton`` is
  ours; the alternatives are what a user has on that GPU: dense ``scaled_dot_product_attention``
  over the same tokens, the plain formulation of the official code (our ``reference`` backend, which
  is that formulation written in PyTorch: cuDNN convolutions for LKA), natten where it installs.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["Case", "SpeedCase", "OPS", "MODEL_PAIRS"]


@dataclasses.dataclass(frozen=True)
class Case:
    """``params``: indices of the leaves that are parameters shared by every token (bias tables, weights):
    their gradients are sums over the whole batch, so their tolerance scales with their largest entry."""
    label: str
    build: Callable[[torch.device, torch.dtype, int], tuple[Callable, list[torch.Tensor]]]
    small: bool = True
    params: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class SpeedCase:
    label: str
    build: Callable[[torch.device, torch.dtype, int], dict[str, tuple[Callable, list[torch.Tensor]]]]


def _randn(shape, device, dtype, gen, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * scale).to(device=device, dtype=dtype)


def _tokens(*maps: torch.Tensor) -> list[torch.Tensor]:
    """``[B, H, W, heads, D]`` maps as contiguous ``[B, heads, H*W, D]`` token tensors (dense SDPA's input)."""
    return [m.flatten(1, 2).transpose(1, 2).contiguous() for m in maps]


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


# ---- na2d --------------------------------------------------------------------------------------
def _na2d(B, H, W, heads, D, kernel, dilation=1, stride=1, shift=0, rpb=True):
    def build(device, dtype, batch):
        from visionzoo.ops import na2d

        g = torch.Generator().manual_seed(0)
        b = B or batch
        leaves = [_randn((b, H, W, heads, D), device, dtype, g) for _ in range(3)]
        if rpb:
            leaves.append(_randn((heads, 2 * kernel - 1, 2 * kernel - 1), device, dtype, g, 0.5))

        def fn(q, k, v, *bias, backend=None):
            return na2d(q, k, v, kernel, dilation, stride, rpb=bias[0] if bias else None, shift=shift,
                        backend=backend)
        return fn, leaves
    return build


def _na2d_speed(H, W, heads, D, kernel, dilation):
    def build(device, dtype, batch):
        fn, leaves = _na2d(0, H, W, heads, D, kernel, dilation)(device, dtype, batch)
        tok = _tokens(*leaves[:3])
        return {"triton": (lambda *t: fn(*t, backend="triton"), leaves),
                "reference": (lambda *t: fn(*t, backend="reference"), leaves),
                "sdpa": (_sdpa, tok)}
    return build


# ---- bra ---------------------------------------------------------------------------------------
def _bra(B, H, W, heads, D, n_win, topk):
    """The routed attention with the routing fixed from the case's (low-precision) inputs: top-k region
    selection is discontinuous, so a float64 reference that routed on its own would pick other regions
    wherever two affinities round alike (it does at BiFormer-tiny's stage 3 in fp16/bf16). The routing
    is plain PyTorch (``bra_routing``); the kernels under test take the regions."""
    def build(device, dtype, batch):
        from visionzoo.ops import _backend, bra_routing
        from visionzoo.ops.partition import crop, pad_to_size, padded_size

        g = torch.Generator().manual_seed(0)
        leaves = [_randn((B or batch, H, W, heads, D), device, dtype, g) for _ in range(3)]
        idx = bra_routing(leaves[0], leaves[1], n_win, topk)
        size = padded_size((H, W), n_win)

        def fn(q, k, v, backend=None):
            qp, kp, vp = (pad_to_size(t, size) for t in (q, k, v))
            impl, _ = _backend.resolve("bra", qp, kp, vp, backend=backend, n_win=n_win)
            return crop(impl(qp, kp, vp, idx, n_win, D ** -0.5, (H, W)), (H, W))
        return fn, leaves
    return build


def _bra_speed(H, W, heads, D, n_win, topk):
    def build(device, dtype, batch):
        fn, leaves = _bra(0, H, W, heads, D, n_win, topk)(device, dtype, batch)
        return {"triton": (lambda *t: fn(*t, backend="triton"), leaves),
                "reference": (lambda *t: fn(*t, backend="reference"), leaves),
                "sdpa": (_sdpa, _tokens(*leaves))}
    return build


# ---- halo_attn ---------------------------------------------------------------------------------
def _halo(B, H, W, heads, D, block, halo, stride=1):
    def build(device, dtype, batch):
        from visionzoo.ops import halo_attn

        g = torch.Generator().manual_seed(0)
        b = B or batch
        win = block + 2 * halo
        leaves = [_randn((b, -(-H // stride), -(-W // stride), heads, D), device, dtype, g),
                  _randn((b, H, W, heads, D), device, dtype, g), _randn((b, H, W, heads, D), device, dtype, g),
                  _randn((2 * win - 1, D), device, dtype, g, 0.5), _randn((2 * win - 1, D), device, dtype, g, 0.5)]

        def fn(q, k, v, rel_h, rel_w, backend=None):
            return halo_attn(q, k, v, block, halo, rel_h, rel_w, stride=stride, backend=backend)
        return fn, leaves
    return build


def _halo_speed(H, W, heads, D, block, halo):
    def build(device, dtype, batch):
        fn, leaves = _halo(0, H, W, heads, D, block, halo)(device, dtype, batch)
        return {"triton": (lambda *t: fn(*t, backend="triton"), leaves),
                "reference": (lambda *t: fn(*t, backend="reference"), leaves),
                "sdpa": (_sdpa, _tokens(*leaves[:3]))}
    return build


# ---- lka ---------------------------------------------------------------------------------------
def _lka(B, C, H, W, k0=5, k1=7, dilation=3):
    def build(device, dtype, batch):
        from visionzoo.ops import lka

        g = torch.Generator().manual_seed(0)
        leaves = [_randn((B or batch, C, H, W), device, dtype, g), _randn((C, 1, k0, k0), device, dtype, g, 1 / k0),
                  _randn((C,), device, dtype, g), _randn((C, 1, k1, k1), device, dtype, g, 1 / k1),
                  _randn((C,), device, dtype, g)]

        def fn(x, w0, b0, w1, b1, backend=None):
            return lka(x, w0, b0, w1, b1, dilation, backend=backend)
        return fn, leaves
    return build


def _lka_speed(C, H, W):
    def build(device, dtype, batch):
        fn, leaves = _lka(0, C, H, W)(device, dtype, batch)
        return {"triton": (lambda *t: fn(*t, backend="triton"), leaves),
                "cudnn (reference)": (lambda *t: fn(*t, backend="reference"), leaves)}
    return build


# ---- linear_attn (FLatten) ---------------------------------------------------------------------
def _linear(B, N, n, heads, d, p=3.0, pos=True):
    def build(device, dtype, batch):
        from visionzoo.ops import linear_attn

        g = torch.Generator().manual_seed(0)
        C = heads * d
        b = B or batch
        leaves = [_randn((b, N, C), device, dtype, g), _randn((b, n, C), device, dtype, g),
                  _randn((b, n, C), device, dtype, g), _randn((C,), device, dtype, g, 0.5)]
        if pos:
            leaves.append(_randn((1, n, C), device, dtype, g, 0.2))

        def fn(q, k, v, scale, *pe, backend=None):
            return linear_attn(q, k, v, num_heads=heads, focusing_factor=p, scale=scale, pos=pe[0] if pe else None,
                               backend=backend)
        return fn, leaves
    return build


def _linear_speed(N, heads, d):
    def build(device, dtype, batch):
        fn, leaves = _linear(0, N, N, heads, d)(device, dtype, batch)
        tok = [t.unflatten(-1, (heads, d)).transpose(1, 2).contiguous() for t in leaves[:3]]
        return {"triton": (lambda *t: fn(*t, backend="triton"), leaves),
                "reference": (lambda *t: fn(*t, backend="reference"), leaves),
                "sdpa": (_sdpa, tok)}
    return build


# ---- agent_attn --------------------------------------------------------------------------------
def _agent(B, N, n, heads, d):
    def build(device, dtype, batch):
        from visionzoo.ops import agent_attn

        g = torch.Generator().manual_seed(0)
        b = B or batch
        leaves = [_randn((b, heads, N, d), device, dtype, g) for _ in range(3)]
        leaves += [_randn((b, heads, n, d), device, dtype, g), _randn((heads, n, N), device, dtype, g, 0.5),
                   _randn((heads, N, n), device, dtype, g, 0.5)]

        def fn(q, k, v, agents, bias_kv, bias_q, backend=None):
            return agent_attn(q, k, v, agents, bias_kv, bias_q, backend=backend)
        return fn, leaves
    return build


def _agent_speed(N, n, heads, d):
    def build(device, dtype, batch):
        fn, leaves = _agent(0, N, n, heads, d)(device, dtype, batch)
        return {"triton": (lambda *t: fn(*t, backend="triton"), leaves),
                "reference": (lambda *t: fn(*t, backend="reference"), leaves),
                "sdpa": (_sdpa, [t.contiguous() for t in leaves[:3]])}
    return build


#: op -> {"cases": [...], "speed": [...]}; a new Triton op adds its rows here
OPS: dict[str, dict[str, list]] = {
    "na2d": {
        "cases": [Case("9x11 k3 d2 rpb", _na2d(1, 9, 11, 2, 16, 3, 2), params=(3,)),
                  Case("10x13 swin P4 shift 2", _na2d(1, 10, 13, 2, 16, 4, 1, 4, 2), params=(3,)),
                  Case("5x4 k7 (map < window)", _na2d(1, 5, 4, 1, 32, 7), params=(3,)),
                  Case("dinat_tiny s1 56x56 k7 d8", _na2d(2, 56, 56, 2, 32, 7, 8), small=False, params=(3,)),
                  Case("dinat_tiny s3 14x14 k7 d2", _na2d(2, 14, 14, 8, 32, 7, 2), small=False, params=(3,))],
        "speed": [SpeedCase("dinat_tiny s1 56x56 h2 d32 k7 d8", _na2d_speed(56, 56, 2, 32, 7, 8)),
                  SpeedCase("dinat_tiny s3 14x14 h8 d32 k7 d2", _na2d_speed(14, 14, 8, 32, 7, 2))],
    },
    "bra": {
        "cases": [Case("13x9 n3 top4", _bra(1, 13, 9, 1, 16, 3, 4)),
                  Case("14x14 n7 top4", _bra(1, 14, 14, 2, 16, 7, 4)),
                  Case("biformer_tiny s1 56x56 top1", _bra(2, 56, 56, 2, 32, 7, 1), small=False),
                  Case("biformer_tiny s3 14x14 top16", _bra(2, 14, 14, 8, 32, 7, 16), small=False)],
        "speed": [SpeedCase("biformer_tiny s1 56x56 h2 d32 top1", _bra_speed(56, 56, 2, 32, 7, 1)),
                  SpeedCase("biformer_tiny s3 14x14 h8 d32 top16", _bra_speed(14, 14, 8, 32, 7, 16))],
    },
    "halo_attn": {
        "cases": [Case("9x7 b4 h2 s2", _halo(1, 9, 7, 1, 16, 4, 2, 2), params=(3, 4)),
                  Case("3x4 b8 h3 (map < block)", _halo(1, 3, 4, 2, 16, 8, 3), params=(3, 4)),
                  Case("halonet26t s3 16x16 b8 h2", _halo(2, 16, 16, 8, 16, 8, 2), small=False, params=(3, 4))],
        "speed": [SpeedCase("halonet26t s3 16x16 h8 d16 b8 h2", _halo_speed(16, 16, 8, 16, 8, 2))],
    },
    "lka": {
        # one case of each size: every new (channels, map) tile plan compiles three kernels (~30 s on an H200)
        "cases": [Case("C5 9x13", _lka(1, 5, 9, 13), params=(1, 2, 3, 4)),
                  Case("van_b1 s1 C64 56x56", _lka(2, 64, 56, 56), small=False, params=(1, 2, 3, 4))],
        "speed": [SpeedCase("van_b1 s1 C64 56x56", _lka_speed(64, 56, 56)),
                  SpeedCase("van_b1 s3 C320 14x14", _lka_speed(320, 14, 14))],
    },
    "linear_attn": {
        "cases": [Case("N7 d16 p3", _linear(1, 7, 7, 1, 16), params=(3, 4)),
                  Case("N49 n13 d48 p2.5 h2", _linear(1, 49, 13, 2, 48, p=2.5), params=(3, 4)),
                  Case("N1 d32 no pos", _linear(2, 1, 1, 1, 32, pos=False), params=(3,)),
                  Case("flatten_pvt_tiny s1 3136 h1 d64", _linear(2, 3136, 3136, 1, 64), small=False, params=(3, 4)),
                  Case("flatten_pvt_tiny s2 784 h2 d64", _linear(2, 784, 784, 2, 64), small=False, params=(3, 4))],
        "speed": [SpeedCase("flatten_pvt_tiny s1 56x56 h1 d64", _linear_speed(3136, 1, 64)),
                  SpeedCase("N 112x112 h1 d64", _linear_speed(12544, 1, 64))],
    },
    "agent_attn": {
        "cases": [Case("N7 n4 d16", _agent(1, 7, 4, 1, 16), params=(4, 5)),
                  Case("N50 n9 d32 h2", _agent(1, 50, 9, 2, 32), params=(4, 5)),
                  Case("N13 n49 d16", _agent(1, 13, 49, 1, 16), params=(4, 5)),
                  Case("agent_pvt_tiny s1 3136 n9 h1 d64", _agent(2, 3136, 9, 1, 64), small=False, params=(4, 5)),
                  Case("agent_swin_tiny s2 784 n16 h6 d32", _agent(2, 784, 16, 6, 32), small=False, params=(4, 5))],
        "speed": [SpeedCase("agent_pvt_tiny s1 56x56 n9 h1 d64", _agent_speed(3136, 9, 1, 64)),
                  SpeedCase("agent_swin_tiny s1 56x56 n9 h3 d32", _agent_speed(3136, 9, 3, 32))],
    },
}

#: whole-model rows: (ours, timm model of similar FLOPs or timm's own implementation of the same model)
MODEL_PAIRS = [
    ("dinat_tiny", "swin_tiny_patch4_window7_224"),
    ("biformer_tiny", "swin_tiny_patch4_window7_224"),
    ("halonet26t", "halonet26t"),
    ("maxvit_tiny", "maxvit_tiny_tf_224"),
    ("van_b1", "convnext_nano"),
    ("litv2_small", "swin_tiny_patch4_window7_224"),
    ("flatten_swin_tiny", "swin_tiny_patch4_window7_224"),
    ("agent_pvt_small", "pvt_v2_b2"),
]

