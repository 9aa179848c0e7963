"""The oneDNN inference fast path against the plain modules it replaces."""
import pytest
import torch
import torch.nn as nn
from timm.layers import GELUTanh

import visionzoo
from visionzoo.blocks import fused_eval
from visionzoo.blocks.conv_bn import bn_folded_conv

pytestmark = pytest.mark.skipif(not fused_eval._AVAILABLE, reason="torch built without oneDNN's fused pointwise ops")

ACTS = [(nn.GELU(approximate="tanh"), ("gelu", "tanh")), (GELUTanh(), ("gelu", "tanh")),
        (nn.GELU(), ("gelu", "none")), (nn.Identity(), ("none", "")), (nn.ReLU(), ("relu", ""))]


def _bn(c: int, g: torch.Generator) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, eps=1e-3)
    bn.weight.data.uniform_(0.5, 1.5, generator=g)
    bn.bias.data.normal_(0, 0.2, generator=g)
    bn.running_mean.normal_(0, 0.3, generator=g)
    bn.running_var.uniform_(0.3, 2.0, generator=g)
    return bn.eval()


@pytest.mark.parametrize("act,post", ACTS)
def test_fused_act_of_modules(act, post):
    assert fused_eval.fused_act(act) == post
    assert fused_eval.fused_act(nn.SiLU()) is None


@pytest.mark.parametrize("act,post", ACTS)
def test_linear_act_and_add(act, post):
    fc = nn.Linear(24, 40)
    x, r = torch.randn(2, 5, 7, 24), torch.randn(2, 5, 7, 40)
    with torch.no_grad():
        torch.testing.assert_close(fused_eval.linear_act(x, fc.weight, fc.bias, post), act(fc(x)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused_eval.linear_add(x, fc.weight, fc.bias, r), r + fc(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups,kernel,stride,pre", [(1, 1, 1, True), (16, 3, 1, False), (16, 3, 2, False)])
@pytest.mark.parametrize("act,post", ACTS[:3])
def test_conv_bn_act_folded(groups, kernel, stride, pre, act, post):
    g = torch.Generator().manual_seed(groups + kernel + stride)
    conv = nn.Conv2d(16, 16, kernel, stride, kernel // 2, groups=groups, bias=False)
    pre_bn, bn = (_bn(16, g) if pre else None), _bn(16, g)
    x = torch.randn(2, 16, 9, 11).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = act(bn(conv(pre_bn(x) if pre else x)))
        w, b = bn_folded_conv(conv, bn, pre_bn)
        torch.testing.assert_close(fused_eval.conv_act(x, w, b, conv, post), want, rtol=1e-5, atol=1e-5)


def test_folded_recomputes_every_call():
    """No cache: a ``.data`` edit does not bump ``_version``, so no version-keyed cache could see it."""
    owner, t = nn.Module(), torch.ones(3)
    for want in (2.0, 3.6):
        torch.testing.assert_close(fused_eval.folded(owner, "_x", (t,), lambda: t * 2), torch.full((3,), want))
        t.data.mul_(0.9)
        t.data.add_(0.9)


def test_applies_only_without_autograd_in_eval():
    m, x = nn.Linear(2, 2), torch.randn(1, 2)
    with torch.no_grad():
        assert not fused_eval.applies(m, x)  # training mode
        m.eval()
        assert fused_eval.applies(m, x)
        assert not fused_eval.applies(m, x.double())
        assert not fused_eval.applies(m, x.bfloat16())
        assert not fused_eval.applies(m, "not a tensor")
    assert not fused_eval.applies(m, x)  # autograd on
    with torch.inference_mode():
        assert fused_eval.applies(m, x)


def _perturbed_maxvit(**kw):
    g = torch.Generator().manual_seed(0)
    model = visionzoo.create_model("maxvit_tiny", num_classes=5, widths=(32, 64), depths=(1, 1),
                                   stem_width=16, window=4, **kw).eval()
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.load_state_dict(_bn(mod.num_features, g).state_dict())
    return model


@pytest.mark.parametrize("size", [(64, 64), (37, 50)])
def test_maxvit_fast_path_equals_plain_path(size, monkeypatch):
    """Eval under no_grad takes the fused path, eval with autograd on the plain modules."""
    calls = []
    for name in ("conv_act", "linear_act", "linear_add"):
        fn = getattr(fused_eval, name)
        monkeypatch.setattr(fused_eval, name, lambda *a, _fn=fn, _n=name, **k: calls.append(_n) or _fn(*a, **k))
    model = _perturbed_maxvit()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        fast = model(x)
    # per MaxViT block: two convolutions, qkv / proj / fc1 (x2 attentions) and fc2 + residual (x2)
    assert sorted(set(calls)) == ["conv_act", "linear_act", "linear_add"] and len(calls) == 2 * (2 + 6 + 2)
    calls.clear()
    with torch.enable_grad():
        plain = model(x)
    assert not calls
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    # a weight update reaches the fast path (folded weights are rebuilt)
    bn = model.stages[0].blocks[0].conv.norm1
    with torch.no_grad():
        bn.running_var.mul_(3.0)
        fast = model(x)
    with torch.enable_grad():
        plain = model(x)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", [nn.GELU(), nn.GELU(approximate="tanh")])
@pytest.mark.parametrize("with_gamma", [False, True])
def test_mlp_add_equals_residual_mlp(act, with_gamma):
    """``residual + gamma * mlp(x)`` with the layer scale folded into fc2, cached until gamma changes."""
    from timm.layers import Mlp
    g = torch.Generator().manual_seed(4)
    owner, mlp = nn.Module().eval(), Mlp(24, 40, act_layer=type(act)).eval()
    mlp.act = act
    x, res = torch.randn(2, 5, 7, 24, generator=g), torch.randn(2, 5, 7, 24, generator=g)
    gamma = torch.rand(24, generator=g) if with_gamma else None
    with torch.no_grad():
        assert fused_eval.mlp_applies(owner, mlp, x)
        want = res + (gamma if with_gamma else 1) * mlp(x)
        torch.testing.assert_close(fused_eval.mlp_add(owner, mlp, x, res, gamma), want, rtol=1e-5, atol=1e-5)
        if with_gamma:
            gamma.mul_(2)  # e.g. load_state_dict in place: the folded fc2 is rebuilt
            torch.testing.assert_close(fused_eval.mlp_add(owner, mlp, x, res, gamma), res + gamma * mlp(x),
                                       rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        mlp.act = nn.SiLU()  # no oneDNN post-op here: the callers keep the plain modules
        assert not fused_eval.mlp_applies(owner, mlp, x)
    assert not fused_eval.mlp_applies(owner, Mlp(24, 40).eval(), x)  # autograd on


@pytest.mark.parametrize("layer_scale", [None, 0.5])
def test_nat_fast_path_equals_plain_path(layer_scale, monkeypatch):
    """NAT/DiNAT inference: qkv / proj through oneDNN's GEMM, the MLP as two fused GEMMs (layer scale
    folded); autograd on keeps the plain modules; same outputs."""
    calls = []
    for name in ("linear_act", "linear_add"):
        fn = getattr(fused_eval, name)
        monkeypatch.setattr(fused_eval, name, lambda *a, _fn=fn, _n=name, **k: calls.append(_n) or _fn(*a, **k))
    model = visionzoo.create_model("dinat_mini", num_classes=5, embed_dim=16, num_heads=(1, 2), depths=(1, 2),
                                   dilations=((1, 4), (1, 2)), layer_scale=layer_scale).eval()
    if layer_scale is not None:
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        fast = model(x)
    # per block: qkv, proj, fc1 + act (linear_act), fc2 + residual (linear_add)
    assert calls.count("linear_add") == 3 and calls.count("linear_act") == 3 * 3
    calls.clear()
    with torch.enable_grad():
        plain = model(x)
    assert not calls
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def test_compile_traces_the_plain_modules(monkeypatch):
    """Under torch.compile the fast path is off (Inductor cannot lower these ops with weights that are
    graph inputs, and fuses on its own); the compiled model equals the eager one."""
    calls = []
    for name in ("linear_act", "linear_add", "conv_act"):
        fn = getattr(fused_eval, name)
        monkeypatch.setattr(fused_eval, name, lambda *a, _fn=fn, _n=name, **k: calls.append(_n) or _fn(*a, **k))
    model = visionzoo.create_model("dinat_mini", num_classes=5, embed_dim=16, num_heads=(1, 2), depths=(1, 1),
                                   dilations=((1,), (1,))).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        compiled = torch.compile(model, backend="eager", fullgraph=False)(x)
        assert not calls
        torch.testing.assert_close(compiled, model(x), rtol=1e-5, atol=1e-5)
    assert calls  # eager: the fast path


@pytest.mark.parametrize("name", ["cbam_resnet18", "eca_resnet50", "se_resnet50"])
def test_channel_attn_resnet_fast_path_equals_plain_path(name, monkeypatch):
    """Attention ResNets: every Conv-BN(-ReLU) of a block as one folded oneDNN convolution (basic and
    bottleneck blocks, downsampling shortcuts); autograd on keeps the plain modules; same outputs."""
    calls = []
    fn = fused_eval.conv_act
    monkeypatch.setattr(fused_eval, "conv_act", lambda *a, **k: calls.append(1) or fn(*a, **k))
    g = torch.Generator().manual_seed(6)
    model = visionzoo.create_model(name, num_classes=5, depths=(1, 1, 1, 1)).eval()
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.load_state_dict(_bn(mod.num_features, g).state_dict())
    x = torch.randn(2, 3, 45, 38)
    with torch.no_grad():
        fast = model(x)
    convs = 2 if name.endswith("18") else 3
    assert len(calls) == 4 * convs + (3 if name.endswith("18") else 4)  # 4 blocks, their downsamplings
    calls.clear()
    with torch.enable_grad():
        plain = model(x)
    assert not calls
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["biformer_tiny", "biformer_stl", "dinat_s_tiny", "nat_isotropic_small"])
def test_model_fast_path_equals_plain_path(name, monkeypatch):
    """Every family on the fast path (reduced configs; attention projections and MLPs through oneDNN)
    gives the plain path's outputs, and takes the fast path only with autograd off."""
    from tests.models import create_tiny
    calls = []
    for fname in ("linear_act", "linear_add"):
        fn = getattr(fused_eval, fname)
        monkeypatch.setattr(fused_eval, fname, lambda *a, _fn=fn, _n=fname, **k: calls.append(_n) or _fn(*a, **k))
    model = create_tiny(name, num_classes=5).eval()
    x = torch.randn(2, 3, 61, 45)
    with torch.no_grad():
        fast = model(x)
    assert "linear_act" in calls and "linear_add" in calls
    calls.clear()
    with torch.enable_grad():
        plain = model(x)
    assert not calls
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


# ---- the fused path after any way of changing weights (issue 21 B) ------------------------------------------
FUSED_FAMILIES = ["eca_resnet18", "se_resnet50", "maxvit_tiny", "dinat_mini", "van_b0", "litv2_small", "shvit_s1",
                  "biformer_tiny"]


def _float_tensors(model: nn.Module):
    return [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]


def _edit_data(model):
    for t in _float_tensors(model):
        t.data.mul_(0.9)  # bypasses the version counter


def _edit_in_place(model):
    with torch.no_grad():
        for t in _float_tensors(model):
            t.mul_(1.1)


def _edit_assign_data(model):
    for t in _float_tensors(model):
        t.data = t.data * 0.8  # new storage


def _edit_load_state_dict(model):
    sd = {k: v * 0.7 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(sd)


def _edit_to_dtype(model):
    model.double()
    _edit_data(model)
    model.float()


EDITS = {"data": _edit_data, "in_place": _edit_in_place, "assign_data": _edit_assign_data,
         "load_state_dict": _edit_load_state_dict, "to_dtype": _edit_to_dtype}


def _perturbed_tiny(name: str) -> nn.Module:
    from tests.models import create_tiny
    g = torch.Generator().manual_seed(3)
    model = create_tiny(name, num_classes=5).eval()
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.load_state_dict(_bn(mod.num_features, g).state_dict())
        gamma = getattr(mod, "gamma", None)
        if isinstance(gamma, torch.Tensor):
            gamma.data.uniform_(0.5, 1.5, generator=g)
    return model


def _plain(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model on its plain modules (fused path off), autograd off."""
    old = fused_eval._AVAILABLE
    fused_eval._AVAILABLE = False
    try:
        with torch.no_grad():
            return model(x)
    finally:
        fused_eval._AVAILABLE = old


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("name", FUSED_FAMILIES)
def test_fused_path_follows_weight_edits(name, edit):
    """Eval under no_grad after ``p.data.mul_``, in-place ops, ``p.data = ...``, ``load_state_dict`` and a
    ``to(dtype)`` round trip equals the plain path (the stale-cache bug: logits off by 0.23 / 1.4e-2)."""
    model = _perturbed_tiny(name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)  # the fused path ran (and, before the fix, cached its folds)
    EDITS[edit](model)
    with torch.no_grad():
        after = model(x)
    plain = _plain(model, x)
    assert (after - before).abs().max() > 1e-3  # the edit moved the output
    torch.testing.assert_close(after, plain, rtol=1e-4, atol=1e-4)


# ---- never under graph capture (issue 21 A) ------------------------------------------------------------------
def test_capturing_under_each_tracer():
    assert not fused_eval.capturing()
    compiled = torch.compile(lambda x: x + float(fused_eval.capturing()), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(torch.zeros(2)), torch.ones(2))
    traced = torch.jit.trace(lambda x: x + float(fused_eval.capturing()), (torch.zeros(2),), check_trace=False)
    torch.testing.assert_close(traced(torch.zeros(2)), torch.ones(2))
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False):
        assert fused_eval.capturing()


@pytest.mark.parametrize("name", ["eca_resnet18", "maxvit_tiny", "dinat_mini", "van_b0", "litv2_small"])
def test_graphs_hold_no_onednn_ops(name):
    """jit.trace, torch.export and make_fx of an eval model under no_grad record the plain ATen ops
    (the fused path ran while tracing: 'unsupported input list type: Scalar?' in jit.trace, a
    ``mkldnn._linear_pointwise.binary`` node in an exported program); the graphs equal eager."""
    from torch.fx.experimental.proxy_tensor import make_fx
    model = _perturbed_tiny(name)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        traced = torch.jit.trace(model, (x,), check_trace=False)
        exported = torch.export.export(model, (x,))
        fx = make_fx(lambda t: model(t))(x)
    assert "mkldnn" not in str(traced.inlined_graph)
    assert "mkldnn" not in str(exported.graph) and "mkldnn" not in str(fx.graph)
    with torch.no_grad():
        for got in (traced(x), exported.module()(x), fx(x)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_fx_proxy_takes_the_plain_path():
    from torch.fx import symbolic_trace
    block = nn.Module()
    block.fc = nn.Linear(4, 4)
    block.eval()

    class Owner(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return fused_eval.linear(self, self.fc, x)

    gm = symbolic_trace(Owner().eval())
    assert "mkldnn" not in str(gm.graph) and "fc" in str(gm.graph)


# ---- only BatchNorm types it knows fold (issue 17 item 4: DetrFrozenBatchNorm2d has no eps) ----------------
class FrozenBNWithoutEps(nn.Module):
    """Mimics transformers' ``DetrFrozenBatchNorm2d``: statistics as buffers, epsilon fixed in forward,
    no ``eps`` attribute."""

    def __init__(self, n: int):
        super().__init__()
        for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((n,), fill))

    def forward(self, x):
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + 1e-5).rsqrt()
        return x * scale + (self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale)


def _replace_exact_bn(module: nn.Module, make) -> int:
    """transformers' ``replace_batch_norm`` for exact ``nn.BatchNorm2d`` children (copying statistics)."""
    count = 0
    for child_name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = make(child.num_features)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(new, key).copy_(getattr(child, key).detach())
            setattr(module, child_name, new)
            count += 1
        else:
            count += _replace_exact_bn(child, make)
    return count


def test_bn_foldable_types():
    assert fused_eval.bn_foldable(nn.BatchNorm2d(3).eval()) and fused_eval.bn_foldable(None)
    assert not fused_eval.bn_foldable(nn.BatchNorm2d(3))  # training: batch statistics
    assert not fused_eval.bn_foldable(nn.BatchNorm2d(3, track_running_stats=False).eval())
    assert not fused_eval.bn_foldable(FrozenBNWithoutEps(3).eval())

    class MyBN(nn.BatchNorm2d):  # a subclass may change forward: not folded
        pass
    assert not fused_eval.bn_foldable(MyBN(3).eval())


@pytest.mark.parametrize("name", ["eca_resnet18", "cbam_resnet18", "shvit_s1"])
def test_unknown_frozen_bn_runs_as_itself(name):
    """A backbone whose BatchNorms were replaced by a DETR-style frozen BN (no ``eps``) evaluates under
    no_grad (it raised ``AttributeError: ... 'eps'``) and equals the plain path."""
    model = _perturbed_tiny(name)
    assert _replace_exact_bn(model, FrozenBNWithoutEps) > 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, _plain(model, x), rtol=1e-5, atol=1e-5)


def test_transformers_frozen_bn():
    transformers_detr = pytest.importorskip("transformers.models.detr.modeling_detr",
                                            reason="transformers not installed (optional framework)")
    model = _perturbed_tiny("eca_resnet18")
    with torch.no_grad():
        want = model(torch.ones(1, 3, 64, 64))
    transformers_detr.replace_batch_norm(model)
    assert any(type(m).__name__ == "DetrFrozenBatchNorm2d" for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(torch.ones(1, 3, 64, 64)), want, rtol=1e-4, atol=1e-4)
