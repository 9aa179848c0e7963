"""Hugging Face transformers: ``TimmBackbone`` over ``vz_*`` models in UperNet, DETR and Mask2Former, one train step
and eval each (tiny heads, full-size small backbones at 64 px), and DETR's frozen-BN CNN backbone in eval under
``no_grad`` (the fused eval path must read DetrFrozenBatchNorm2d's statistics correctly)."""

import pytest
import torch

import visionzoo  # noqa: F401  (registers vz_* in timm)

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
pytest.importorskip("scipy", reason="scipy is not installed (DETR / Mask2Former's Hungarian matcher)")

from transformers import (  # noqa: E402 (after the skips)
    DetrConfig,
    DetrForObjectDetection,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    TimmBackboneConfig,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

# out_indices of the strides 4-32 levels (the visionzoo ResNets' level 0 is the stride-2 stem, as timm's)
LEVELS = {"eca_resnet18": [1, 2, 3, 4], "dinat_mini": [0, 1, 2, 3]}


def _backbone(name, **kw):
    return TimmBackboneConfig(backbone=f"vz_{name}", out_indices=LEVELS[name], **kw)


def _images(n=2, size=64):
    return torch.randn(n, 3, size, size)


def _backbone_grads(model):
    grads = [p.grad for n, p in model.named_parameters() if "backbone" in n and p.requires_grad]
    return grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", list(LEVELS))
def test_upernet(name):
    config = UperNetConfig(
        backbone_config=_backbone(name),
        hidden_size=32,
        auxiliary_in_channels=None,
        use_auxiliary_head=False,
        num_labels=3,
    )
    model = UperNetForSemanticSegmentation(config).train()
    out = model(pixel_values=_images(), labels=torch.randint(0, 3, (2, 64, 64)))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert _backbone_grads(model)
    with torch.no_grad():
        assert model.eval()(pixel_values=_images(1)).logits.shape == (1, 3, 64, 64)


def _detr(name):
    config = DetrConfig(
        backbone_config=_backbone(name),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=8,
        num_labels=3,
    )
    return DetrForObjectDetection(config)


@pytest.mark.parametrize("name", list(LEVELS))
def test_detr(name):
    model = _detr(name).train()
    labels = [
        {"class_labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.4]])}
        for _ in range(2)
    ]
    out = model(pixel_values=_images(), labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert _backbone_grads(model)
    with torch.no_grad():
        pred = model.eval()(pixel_values=_images(1))
    assert pred.logits.shape == (1, 8, 4) and pred.pred_boxes.shape == (1, 8, 4)


def test_detr_frozen_bn_eval_under_no_grad():
    """DETR swaps every BatchNorm2d for DetrFrozenBatchNorm2d (no ``eps`` attribute, eps 1e-5 hard-coded); eval
    under ``no_grad`` (where visionzoo's fused Conv-BN path may run) equals eval with autograd on."""
    model = _detr("eca_resnet18").eval()
    frozen = [m for m in model.modules() if type(m).__name__ == "DetrFrozenBatchNorm2d"]
    assert frozen and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for m in frozen:  # statistics away from the identity, so that a wrong fold shows
        m.running_var.uniform_(0.5, 2.0)
        m.running_mean.normal_()
    x = _images(1)
    with torch.no_grad():
        fast = model(pixel_values=x)
    with torch.enable_grad():
        ref = model(pixel_values=x)
    torch.testing.assert_close(fast.logits, ref.logits.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.pred_boxes, ref.pred_boxes.detach(), rtol=1e-4, atol=1e-4)


def test_mask2former():
    config = Mask2FormerConfig(
        backbone_config=_backbone("dinat_mini"),
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        num_attention_heads=2,
        num_queries=8,
        num_labels=3,
        train_num_points=256,
    )
    model = Mask2FormerForUniversalSegmentation(config).train()
    masks = torch.zeros(2, 64, 64)
    masks[0, 8:40, 8:40] = 1
    masks[1, 30:60, 20:50] = 1
    out = model(
        pixel_values=_images(),
        mask_labels=[m[None] for m in masks],
        class_labels=[torch.tensor([1]), torch.tensor([2])],
    )
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert _backbone_grads(model)
    with torch.no_grad():
        pred = model.eval()(pixel_values=_images(1))
    assert pred.masks_queries_logits.shape[:2] == (1, 8)
