"""segmentation_models_pytorch with ``tu-vz_*`` encoders: Unet / FPN / UPerNet, DeepLabV3(+) through the CNN
families' ``output_stride``; a train step (finite loss, encoder gradients) and eval each, on tiny models."""

import pytest
import timm
import torch

import visionzoo
from visionzoo.models._registry import tiny_overrides

from . import MODELS

smp = pytest.importorskip("segmentation_models_pytorch", reason="segmentation-models-pytorch is not installed")


def _train_and_eval(model, size=(64, 96), classes=3):
    model.train()
    x = torch.randn(2, 3, *size)
    target = torch.randint(0, classes, (2, *size))
    logits = model(x)
    assert logits.shape == (2, classes, *size)
    loss = torch.nn.functional.cross_entropy(logits, target)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, classes, *size)


@pytest.mark.parametrize("arch", ["Unet", "FPN", "UPerNet"])
@pytest.mark.parametrize("name", MODELS)
def test_decoders(name, arch):
    kw = {"decoder_channels": (32, 16, 8, 8, 8)} if arch == "Unet" else {"decoder_channels": 16}
    if arch == "FPN":
        kw = {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}
    model = getattr(smp, arch)(f"tu-vz_{name}", encoder_weights=None, classes=3, **kw, **tiny_overrides(name))
    if name == "eca_resnet18":  # timm's ResNet layout: the stride-2 stem level feeds Unet's stride-2 skip
        assert model.encoder.out_channels[1] == tiny_overrides(name)["stem_width"]
    _train_and_eval(model)


@pytest.mark.parametrize(("arch", "output_stride"), [("DeepLabV3", 8), ("DeepLabV3Plus", 16)])
@pytest.mark.parametrize("name", ["eca_resnet18", "eca_mobilenet_v2"])
def test_deeplab_output_stride(name, arch, output_stride):
    model = getattr(smp, arch)(
        f"tu-vz_{name}",
        encoder_weights=None,
        classes=3,
        encoder_output_stride=output_stride,
        decoder_channels=16,
        **tiny_overrides(name),
    )
    _train_and_eval(model)


@pytest.mark.parametrize("name", ["eca_resnet18", "se_resnext50_32x4d", "eca_mobilenet_v2"])
def test_output_stride_dilates_like_timm(name):
    """Same weights, dilated: the level strides and map sizes of timm's ``output_stride``; the 32 model's
    weights load unchanged (dilation adds no parameters)."""
    kw = tiny_overrides(name)
    plain = visionzoo.create_model(name, features_only=True, **kw).eval()
    assert plain.feature_info.reduction() == [2, 4, 8, 16, 32]  # timm's ResNet / MobileNetV2 levels
    x = torch.randn(1, 3, 64, 64)
    for os_ in (16, 8):
        dilated = visionzoo.create_model(name, features_only=True, output_stride=os_, **kw).eval()
        dilated.load_state_dict(plain.state_dict())
        assert dilated.feature_info.reduction() == [min(r, os_) for r in plain.feature_info.reduction()]
        with torch.no_grad():
            assert [f.shape[-1] for f in dilated(x)] == [64 // min(r, os_) for r in plain.feature_info.reduction()]
    with pytest.raises(ValueError, match="output_stride"):
        visionzoo.create_model(name, output_stride=4, **kw)


def test_stem_level_matches_timm_resnet_indices():
    """``out_indices`` of a visionzoo ResNet mean what they mean for timm's: 0 the stem, 1-4 the stages."""
    ours = timm.create_model("vz_eca_resnet50", features_only=True, device="meta")
    theirs = timm.create_model("resnet50", features_only=True, device="meta")
    assert ours.feature_info.reduction() == theirs.feature_info.reduction()
    assert ours.feature_info.channels() == theirs.feature_info.channels()
