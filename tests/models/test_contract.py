"""The timm model contract (reference/ecosystem.md §1, §8), checked for every registered model.

Written once and parametrized over ``visionzoo.list_models()``, so a new family is covered the
moment it registers. Large models run in reduced form (each family's ``register_family(tiny=...)``); every name is
still built at full size on the meta device and its parameter count checked against the
official one.
"""
import copy
import fnmatch
import math

import pytest
import timm
import torch
from timm.models._manipulate import group_parameters

import visionzoo
from visionzoo.models._registry import MODELS

from ..fixtures import official_param_count
from . import create_tiny

NAMES = visionzoo.list_models()
SIZE = 64  # every reduced model runs at this size; the any-size test covers others


def _x(b=2, h=SIZE, w=SIZE):
    return torch.randn(b, 3, h, w)


@pytest.mark.parametrize("name", NAMES)
def test_meta_construction_and_official_param_count(name):
    model = visionzoo.create_model(name, device="meta")
    assert all(t.device.type == "meta" for t in list(model.parameters()) + list(model.buffers()))
    meta = MODELS[name].meta
    key = meta.get("official_params_key")
    if key is None and "paper_params_m" in meta:  # no code exists (HaloNet H-series): the paper's 0.1 M
        assert round(visionzoo.count_params(model) / 1e6, 1) == meta["paper_params_m"], name
        return
    assert visionzoo.count_params(model) == official_param_count(key), name


@pytest.mark.parametrize("name", NAMES)
def test_unknown_kwarg_raises(name):
    with pytest.raises(TypeError):
        visionzoo.create_model(name, device="meta", not_a_model_arg=1)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_all_params_get_grad(name):
    model = create_tiny(name, num_classes=7).train()
    out = model(_x())
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_features_head_intermediates(name):
    model = create_tiny(name).eval()
    x = _x()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.ndim == 4 and feats.shape[1] == model.num_features
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        final, taps = model.forward_intermediates(x)
        torch.testing.assert_close(final, feats, rtol=1e-5, atol=1e-5)
        assert len(taps) == len(model.feature_info) >= 3
        reductions = [f["reduction"] for f in model.feature_info]
        assert reductions == sorted(reductions)
        for tap, info in zip(taps, model.feature_info):
            assert tap.shape[1] == info["num_chs"]
            r = info["reduction"]
            assert SIZE / (2 * r) < tap.shape[2] <= math.ceil(SIZE / r) + 1
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        for a, b in zip(last_two, taps[-2:]):
            torch.testing.assert_close(a, b)
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)[0]
        assert normed.shape[2:] == taps[-1].shape[2:]


@pytest.mark.parametrize("name", NAMES)
def test_prune_intermediate_layers(name):
    model = create_tiny(name).eval()
    x = _x()
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        expected = model(x)
        kept = copy.deepcopy(model)
        kept.prune_intermediate_layers([len(taps) - 1], prune_head=False)
        torch.testing.assert_close(kept(x), expected)
    for i in range(len(taps)):
        with torch.no_grad():
            early = model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True)[0]
            torch.testing.assert_close(early, taps[i])
        pruned = copy.deepcopy(model)
        take = pruned.prune_intermediate_layers([i], prune_norm=True)
        assert pruned.num_features == model.feature_info[i]["num_chs"]
        with torch.no_grad():
            tap = pruned.forward_intermediates(x, indices=take, intermediates_only=True)[0]
            torch.testing.assert_close(tap, taps[i])
        pruned.train()
        sum(t.sum() for t in pruned.forward_intermediates(x, indices=take, intermediates_only=True)).backward()
        unused = [n for n, p in pruned.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, f"pruned to {i}: unused parameters {unused}"


@pytest.mark.parametrize("name", NAMES)
def test_features_only(name):
    model = create_tiny(name, features_only=True, out_indices=(1, -1)).eval()
    full = create_tiny(name).eval()
    full.load_state_dict({k: v for k, v in model.state_dict().items()}, strict=False)
    x = _x()
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == 2
    assert [o.shape[1] for o in outs] == model.feature_info.channels()
    assert model.feature_info.reduction() == [full.feature_info[1]["reduction"], full.feature_info[-1]["reduction"]]
    model.set_grad_checkpointing(True)  # detection stacks train features_only backbones this way
    model.train()
    sum(o.sum() for o in model(x)).backward()


@pytest.mark.parametrize("name", NAMES)
def test_reset_classifier(name):
    model = create_tiny(name).eval()
    x = _x()
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.num_classes == 5
    assert model.get_classifier().out_features == 5
    model.reset_classifier(0)
    assert model(x).shape == (2, model.head_hidden_size)
    model.reset_classifier(0, "")
    out = model(x)
    assert out.ndim == 4 and out.shape[1] == model.num_features
    model.reset_classifier(3)  # None keeps the current ('') pooling
    assert model.global_pool == ""
    assert create_tiny(name, num_classes=0, global_pool="").eval()(x).ndim == 4


@pytest.mark.parametrize("name", NAMES)
def test_grad_checkpointing_identical(name):
    model = create_tiny(name).train()
    torch.manual_seed(1)
    x = _x()
    ref_model = copy.deepcopy(model)
    ref = ref_model(x)
    ref.sum().backward()
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref)
    for (n, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("name", NAMES)
def test_group_matcher_and_no_weight_decay(name):
    model = visionzoo.create_model(name, device="meta")
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1
    assert len(set(group_parameters(model, model.group_matcher(coarse=True), reverse=True).values())) > 1
    names = [n for n, _ in model.named_parameters()]
    for pattern in model.no_weight_decay():
        assert any(fnmatch.fnmatch(n, pattern) for n in names), f"no_weight_decay entry {pattern!r} names no parameter"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(32, 32), (200, 232), (256, 256)])
def test_any_input_size(name, size):
    model = create_tiny(name)
    x = _x(1, *size) if size != (256, 256) else _x(2, *size)
    model.train()  # batch statistics need > 1 value per channel on tiny maps
    out = model(torch.cat([x, x.flip(-1)]) if x.shape[0] == 1 else x)
    assert torch.isfinite(out).all()
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name", NAMES)
def test_dtype_follows_cast(name):
    model = create_tiny(name).eval()
    x = _x(1)
    model(x)
    model.to(torch.bfloat16)
    with torch.no_grad():
        assert model(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("name", NAMES)
def test_timm_registry_entry(name):
    assert f"vz_{name}" in timm.list_models("vz_*")
    model = timm.create_model(f"vz_{name}", device="meta")
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == f"vz_{name}"
    sd = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in sd and f"{cfg['classifier']}.weight" in sd
    assert model.in_chans == cfg["input_size"][0]


@pytest.mark.parametrize("name", NAMES)
def test_fx_trace_matches_eager(name):
    """torch.fx with timm's leaf-module registry, as timm's FX feature extraction and detection /
    segmentation tooling trace a backbone: the traced eval graph gives the eager logits."""
    from timm.models._features_fx import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = create_tiny(name, num_classes=5).eval()
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    _, nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    fx_model = create_feature_extractor(model, return_nodes=[nodes[-1]], tracer_kwargs=tracer_kwargs).eval()
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(next(iter(fx_model(x).values())), model(x), rtol=1e-5, atol=1e-5)
