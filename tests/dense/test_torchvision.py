"""torchvision detection with visionzoo backbones: FasterRCNN, MaskRCNN and RetinaNet, one train step and eval each,
on images whose size is not a multiple of 32 (the transform's padding is switched off so the backbone sees them)."""

from collections import OrderedDict

import pytest
import timm
import torch
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.ops.misc import FrozenBatchNorm2d

import visionzoo
from visionzoo.dense.torchvision import anchors_and_roi_align, backbone_with_fpn
from visionzoo.models._registry import tiny_overrides

from . import MODELS, boxes_and_masks


def _backbone(name, **kwargs):
    return backbone_with_fpn(name, out_channels=32, **tiny_overrides(name), **kwargs)


def _detector(kind, backbone):
    sizes = {"min_size": 100, "max_size": 100, "num_classes": 3}
    if kind == "retinanet":
        anchors, _ = anchors_and_roi_align(backbone, scales_per_octave=3)
        model = RetinaNet(backbone, anchor_generator=anchors, topk_candidates=50, **sizes)
    else:
        anchors, box_pool = anchors_and_roi_align(backbone)
        extra = {"mask_roi_pool": anchors_and_roi_align(backbone, roi_output_size=14)[1]} if kind == "mask" else {}
        model = (MaskRCNN if kind == "mask" else FasterRCNN)(
            backbone,
            rpn_anchor_generator=anchors,
            box_roi_pool=box_pool,
            box_batch_size_per_image=32,
            rpn_batch_size_per_image=32,
            rpn_pre_nms_top_n_train=100,
            rpn_post_nms_top_n_train=50,
            rpn_pre_nms_top_n_test=100,
            rpn_post_nms_top_n_test=50,
            **extra,
            **sizes,
        )
    model.transform.size_divisible = 1  # the backbone itself sees 100 x 84
    return model


CASES = [(name, kind) for name in MODELS for kind in ("faster", "mask", "retinanet")]


@pytest.mark.parametrize(("name", "kind"), [*CASES, ("vitrpb_small", "faster")])  # + an isotropic simple pyramid
def test_train_step_and_eval(name, kind):
    retina = kind == "retinanet"
    backbone = _backbone(
        name,
        trainable_stages=2,
        strides=(8, 16, 32) if retina else (4, 8, 16, 32),
        extra_blocks="p6p7" if retina else "pool",
    )
    assert backbone.strides == ([8, 16, 32, 64, 128] if retina else [4, 8, 16, 32, 64])
    model = _detector(kind, backbone).train()
    images, targets = boxes_and_masks()
    losses = model(images, targets)
    assert (kind == "mask") == ("loss_mask" in losses)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    trunk = backbone.body.model
    frozen = list(trunk.stem.parameters()) + list(trunk.stages[0].parameters()) + list(trunk.stages[1].parameters())
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)
    for i in (2, 3):
        grads = [p.grad for p in trunk.stages[i].parameters()]
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), i
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 90, 75)])
    assert set(out[0]) >= {"boxes", "scores", "labels"} and (kind != "mask" or "masks" in out[0])


@pytest.mark.parametrize("name", MODELS)
def test_backbone_levels_any_size(name):
    backbone = _backbone(name).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 100, 76))
    assert isinstance(out, OrderedDict) and list(out) == ["0", "1", "2", "3", "pool"]
    assert [o.shape[1] for o in out.values()] == [32] * 5
    assert [o.shape[-2] for o in out.values()] == [25, 13, 7, 4, 2]  # ceil(100 / stride), P6 pooled from P5


def test_frozen_bn_and_options():
    backbone = _backbone("eca_resnet18")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    trainable_bn = _backbone("eca_resnet18", norm_layer=None)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trainable_bn.modules())
    with pytest.raises(ValueError, match="trainable_stages"):
        _backbone("eca_resnet18", trainable_stages=7)
    with pytest.raises(ValueError, match="extra_blocks"):
        _backbone("eca_resnet18", extra_blocks="p6")


def test_frozen_bn_keeps_statistics():
    name = "eca_resnet18"
    plain = visionzoo.create_model(name, features_only=True, out_indices=(1, 2, 3, 4), **tiny_overrides(name)).eval()
    for m in plain.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.running_var, 0.5, 2.0)
            torch.nn.init.normal_(m.running_mean)
            torch.nn.init.normal_(m.weight)
    backbone = _backbone(name, trainable_stages=None)
    backbone.body.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        for a, b in zip(plain(x), backbone.body.eval()(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["vz_eca_resnet18", "vz_dinat_mini", "vz_shvit_s1", "vz_maxvit_tiny"])
def test_timm_feature_cls_dict(name):
    """timm's ``feature_cls="dict"`` (torchvision's FPN input format): an OrderedDict of NCHW maps keyed like
    timm's FeatureDictNet; ``out_map`` renames the keys."""
    kw = tiny_overrides(name.removeprefix("vz_"))
    model = timm.create_model(name, features_only=True, feature_cls="dict", out_indices=(1, 2), **kw).eval()
    lst = timm.create_model(name, features_only=True, out_indices=(1, 2), **kw).eval()
    lst.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out, ref = model(x), lst(x)
    assert isinstance(out, OrderedDict) and list(out) == ["1", "2"]
    for o, r, c in zip(out.values(), ref, model.feature_info.channels()):
        assert o.shape[1] == c
        torch.testing.assert_close(o, r)
    named = timm.create_model(
        name, features_only=True, feature_cls="dict", out_indices=(1, 2), out_map=("c3", "c4"), **kw
    ).eval()
    assert list(named(x)) == ["c3", "c4"]
    with pytest.raises(ValueError, match="feature_cls"):
        timm.create_model(name, features_only=True, feature_cls="tuple", **kw)


@pytest.mark.parametrize("name", visionzoo.list_models())
def test_every_model_builds_with_feature_cls_dict(name):
    """Every registered model takes timm's ``feature_cls="dict"`` (built on the meta device; the forward of the
    same getter is covered per model by the contract suite and, as a dict, by the test above)."""
    model = timm.create_model(
        f"vz_{name}", features_only=True, feature_cls="dict", device="meta", **tiny_overrides(name)
    )
    assert model.return_dict and len(model.feature_info.channels()) == len(model.feature_info.out_indices)
