"""Inference fast path: Linear / Conv (+ folded BatchNorm) + activation as one oneDNN call.

On CPU, an eager ``act(bn(conv(x)))`` makes three passes over a large activation, and ATen's
tanh-GELU alone costs ~3x a memory copy (MaxViT spends about a quarter of its forward there).
oneDNN applies the activation as a post-op of the GEMM / convolution while the output tile is
still in cache; an eval-mode BatchNorm is an affine map that folds into the weights. PyTorch ships
these fused kernels as ``torch.ops.mkldnn._linear_pointwise`` / ``_convolution_pointwise`` (the ops
Inductor's CPU fusions emit); this module calls them from eager code.

The fast path applies only when nothing can observe the difference: the module is in eval mode,
autograd is off (``torch.no_grad`` / ``torch.inference_mode``: these ops have no backward), the
input is a plain float32 CPU tensor and oneDNN is built and enabled, and no graph is being captured
(:func:`capturing`: ``torch.compile``, whose Inductor fuses on its own, ``torch.export``,
``torch.jit.trace`` / ``script``; FX proxies and the fake / functional tensors of export and
``make_fx`` are not plain tensors). A graph must hold the portable ATen ops, never these
oneDNN-only ones. Otherwise the callers run their plain modules.

Used by MaxViT (MBConv, MLP, attention projections), the NAT
family (qkv / proj), every :class:`~visionzoo.blocks.TransformerBlock` (NAT / DiNAT / BiFormer MLPs,
layer scale folded; VAN / LITv2 DW-conv MLPs with GELU fused into the depthwise conv and a BatchNorm
pre-norm folded into ``fc1``), VAN's attention (BatchNorm pre-norm, inner shortcut and layer scale
folded into its projections) and the attention ResNets (Conv-BN-ReLU). Results equal the plain path
up to float rounding (BN folding reassociates; ~1e-6 relative), which the model tests check.

BatchNorms fold only when :func:`bn_foldable`: the exact types whose eval forward is the affine map
of their ``weight`` / ``bias`` / ``running_*`` / ``eps`` (torch's, timm's and torchvision's); any
other norm (e.g. transformers' ``DetrFrozenBatchNorm2d``, which has no ``eps``, or a subclass with
its own forward) sends the caller to its plain modules.

Folded weights are recomputed on every call (:func:`folded`), never cached: a cache keyed by tensor
identity and ``_version`` misses edits through ``.data`` (``p.data.mul_(0.9)`` does not bump the
parameter's version) and storage reuse, and a checksum reads every weight as folding does. The
fold is an elementwise pass over the weights; ``benchmarks/bench_fold_cache.py`` measures its cost:
2.9 % of se_resnet50's and 0.3 % of maxvit_tiny's fused forward at batch 8, one thread (SHViT's
``ConvBN`` always folded per call; HaloNet has no fused path).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import GELUTanh, Mlp
from timm.layers import GELU as TimmGELU

from .conv_bn import bn_foldable, bn_folded_conv, bn_scale_shift
from .mlp import DWConvMlp


__all__ = ["applies", "capturing", "bn_foldable", "fused_act", "linear", "linear_act", "linear_add", "mlp_applies",
           "mlp_add", "conv_act", "folded", "conv_bn_folded", "pre_bn_folded_linear", "dwconv_mlp_applies",
           "dwconv_mlp_add"]

NO_ACT = ("none", "")


def _ops_available() -> bool:
    try:
        torch.ops.mkldnn._linear_pointwise.default  # noqa: B018 - lookup raises if not built
        torch.ops.mkldnn._convolution_pointwise.default  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return torch.backends.mkldnn.is_available()


_AVAILABLE = _ops_available()


def capturing() -> bool:
    """A graph is being captured: ``torch.compile`` / ``torch.export`` (strict or not),
    ``torch.jit.trace`` / ``script``, or a ``TorchDispatchMode`` is active (``make_fx``'s proxy mode,
    fake / functional tensor modes, ``FlopCounterMode``: all record or count ATen ops)."""
    return (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting() or _dispatch_mode_active())


def _dispatch_mode_active() -> bool:
    return torch._C._len_torch_dispatch_stack() > 0


def applies(module: nn.Module, x) -> bool:
    """The fast path may run: eval mode, no autograd, a plain float32 CPU tensor (not an FX proxy nor a
    fake / functional tensor of a tracer), oneDNN enabled, and no graph capture (:func:`capturing`)."""
    return (_AVAILABLE and type(x) is torch.Tensor and not module.training and not torch.is_grad_enabled()
            and x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.enabled
            and not capturing())


def fused_act(act: nn.Module) -> tuple[str, str] | None:
    """oneDNN post-op ``(attr, algorithm)`` of an activation module, ``None`` if it has none here."""
    if isinstance(act, nn.Identity):
        return "none", ""
    if isinstance(act, nn.ReLU):
        return "relu", ""
    if isinstance(act, GELUTanh) or (isinstance(act, nn.GELU) and act.approximate == "tanh"):
        return "gelu", "tanh"
    if isinstance(act, (TimmGELU, nn.GELU)) and getattr(act, "approximate", "none") == "none":
        return "gelu", "none"
    return None


def linear_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: tuple[str, str]) -> torch.Tensor:
    """``act(F.linear(x, weight, bias))`` for any leading dims, as one oneDNN call."""
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), weight, bias, act[0], [], act[1])
    return y.view(*x.shape[:-1], weight.shape[0])


def linear_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               residual: torch.Tensor) -> torch.Tensor:
    """``residual + F.linear(x, weight, bias)`` (``residual`` of the output's shape), the sum fused into the GEMM."""
    y = torch.ops.mkldnn._linear_pointwise.binary(x.reshape(-1, x.shape[-1]), residual.reshape(-1, weight.shape[0]),
                                                  weight, bias, "add")
    return y.view(residual.shape)


def linear(owner: nn.Module, fc: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``fc(x)``, through oneDNN's GEMM when the fast path applies to ``owner`` (faster than ATen's
    addmm at attention shapes)."""
    if applies(owner, x):
        return linear_act(x, fc.weight, fc.bias, NO_ACT)
    return fc(x)


def mlp_applies(owner: nn.Module, mlp: nn.Module, x: torch.Tensor) -> bool:
    """:func:`mlp_add` may run: the fast path applies to ``owner`` and ``mlp`` is a timm ``Mlp`` with a
    fused form (an activation with a oneDNN post-op, no norm)."""
    return (type(mlp) is Mlp and applies(owner, x) and fused_act(mlp.act) is not None
            and isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity))


def mlp_add(owner: nn.Module, mlp: nn.Module, x: torch.Tensor, residual: torch.Tensor,
            gamma: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + gamma * mlp(x)`` as two oneDNN GEMMs: fc1 with the activation as a post-op, fc2 with
    the residual sum (``gamma``, a layer scale, folded into fc2's weights).  Only
    where :func:`mlp_applies`; dropout and drop-path are identities there (eval)."""
    fc1, fc2 = mlp.fc1, mlp.fc2
    w2, b2 = fc2.weight, fc2.bias
    if gamma is not None:
        sources = (w2, gamma) + (() if b2 is None else (b2,))
        w2, b2 = folded(owner, "_fold_mlp_gamma", sources,
                        lambda: (w2 * gamma[:, None], None if b2 is None else b2 * gamma))
    return linear_add(linear_act(x, fc1.weight, fc1.bias, fused_act(mlp.act)), w2, b2, residual)


def conv_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv: nn.Conv2d,
             act: tuple[str, str], padding=None) -> torch.Tensor:
    """``act(conv(x))`` with ``conv``'s geometry and the given (folded) weight and bias; ``padding``
    overrides the conv's own (e.g. 0 after an explicit 'same' pad)."""
    pad = conv.padding if padding is None else padding
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, list(pad), list(conv.stride),
                                                   list(conv.dilation), conv.groups, act[0], [], act[1])


def folded(owner: nn.Module, name: str, sources: tuple[torch.Tensor, ...], make):
    """``make()``: folded weights of ``sources``, recomputed on every call (see the module docstring:
    no cache can see ``.data`` edits). ``owner`` / ``name`` / ``sources`` name what is folded."""
    del owner, name, sources
    return make()


def conv_bn_folded(owner: nn.Module, name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d,
                   pre_bn: nn.BatchNorm2d | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(pre_bn(x)))`` (:func:`~visionzoo.blocks.conv_bn.bn_folded_conv`),
    recomputed per call (:func:`folded`); only where :func:`bn_foldable` holds for both norms."""
    bns = (bn,) if pre_bn is None else (pre_bn, bn)
    sources = tuple(t for m in bns for t in (m.weight, m.bias, m.running_mean, m.running_var))
    sources += tuple(t for t in (conv.weight, conv.bias) if t is not None)
    return folded(owner, name, sources, lambda: bn_folded_conv(conv, bn, pre_bn))


def pre_bn_folded_linear(owner: nn.Module, name: str, fc: nn.Linear, bn: nn.BatchNorm2d | None,
                         gamma: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of ``gamma * fc(bn(x))`` on channels-last tokens (``bn`` in eval: a per-channel
    affine map ``x * s + t``, so ``W' = W diag(s)``, ``b' = W t + b``), recomputed per call (:func:`folded`)."""
    sources = tuple(t for t in (fc.weight, fc.bias, gamma) if t is not None)
    if bn is not None:
        sources += (bn.weight, bn.bias, bn.running_mean, bn.running_var)

    def make():
        w, b = fc.weight, fc.bias
        if bn is not None:
            scale, shift = bn_scale_shift(bn)
            w, b = w * scale, (w @ shift if b is None else b + w @ shift)
        if gamma is not None:
            w, b = w * gamma[:, None], (None if b is None else b * gamma)
        return w.contiguous(), b
    return folded(owner, name, sources, make)


def dwconv_mlp_applies(owner: nn.Module, mlp: nn.Module, x: torch.Tensor) -> bool:
    """:func:`dwconv_mlp_add` may run: the fast path applies and ``mlp`` is a
    :class:`~visionzoo.blocks.mlp.DWConvMlp` whose activation is a oneDNN post-op."""
    return type(mlp) is DWConvMlp and applies(owner, x) and fused_act(mlp.act) is not None


def dwconv_mlp_add(owner: nn.Module, mlp: nn.Module, x: torch.Tensor, residual: torch.Tensor,
                   gamma: torch.Tensor | None = None, pre_bn: nn.BatchNorm2d | None = None) -> torch.Tensor:
    """``residual + gamma * mlp(pre_bn(x))`` for a DW-conv MLP on ``[B, H, W, C]``, in three oneDNN calls:
    fc1 (``pre_bn`` folded in), the depthwise conv with the activation as a post-op (on the channels-last
    NCHW view), fc2 with ``gamma`` folded in and the residual sum. Only where :func:`dwconv_mlp_applies`."""
    w1, b1 = pre_bn_folded_linear(owner, "_fold_dwmlp_fc1", mlp.fc1, pre_bn)
    w2, b2 = pre_bn_folded_linear(owner, "_fold_dwmlp_fc2", mlp.fc2, None, gamma)
    h = linear_act(x, w1, b1, NO_ACT).permute(0, 3, 1, 2)
    dw = mlp.dwconv
    h = conv_act(h, dw.weight, dw.bias, dw, fused_act(mlp.act)).permute(0, 2, 3, 1)
    return linear_add(h, w2, b2, residual)
