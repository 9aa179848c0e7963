"""SE / ECA / CBAM ResNets and ECA-MobileNetV2: parity with the official code and timm."""
import re

import pytest
import timm
import torch
import torchvision

import visionzoo
from visionzoo.models import ca_resnet, eca_mobilenetv2

from ..fixtures import assert_listing_converts, assert_matches_fixture, load_fixture


def _official_kwargs(meta):
    return {**meta["constructor_kwargs"], "width_rebuild": meta["width_rebuild"]}


@pytest.mark.parametrize("fixture", ["eca_resnet_a", "cbam_resnet_a"])
def test_official_fixture_parity(fixture):
    meta, tensors, sd = load_fixture(fixture)
    model = visionzoo.from_official(meta["family"], _official_kwargs(meta), sd)
    assert visionzoo.count_params(model) == meta["num_params"]
    assert_matches_fixture(model, tensors)


def test_official_fixture_through_checkpoint_path(tmp_path):
    """create_model(checkpoint_path=) detects the official layout, unwraps DataParallel checkpoints
    (how the official training scripts save) and takes the class count from the checkpoint."""
    meta, tensors, sd = load_fixture("eca_resnet_a")
    path = tmp_path / "eca.pth.tar"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    model = visionzoo.create_model("eca_resnet18", checkpoint_path=path, depths=(1, 1, 1, 1),
                                   widths=(16, 32, 64, 128), stem_width=16).eval()
    assert model.num_classes == 10
    assert_matches_fixture(model, tensors)


def _randomize_bn(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return model


@pytest.mark.parametrize("timm_name,name", [("legacy_seresnet50", "se_resnet50"),
                                            ("legacy_seresnext50_32x4d", "se_resnext50_32x4d")])
def test_timm_legacy_se_parity(timm_name, name, tmp_path):
    ref = _randomize_bn(timm.create_model(timm_name)).eval()
    path = tmp_path / "legacy.safetensors"
    from safetensors.torch import save_file
    save_file(ref.state_dict(), str(path))
    model = visionzoo.create_model(name, checkpoint_path=path).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.forward_features(x), ref.forward_features(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant,name", [
    ("eca_resnet18", "eca_resnet18"), ("eca_resnet50", "eca_resnet50"), ("eca_resnet152", "eca_resnet152"),
    ("cbam_resnet18", "cbam_resnet18"), ("cbam_resnet50", "cbam_resnet50"), ("cbam_resnet101", "cbam_resnet101"),
])
def test_official_full_size_key_listings_convert(variant, name):
    """Every key and shape of the full-size official ImageNet model maps onto ours."""
    assert_listing_converts(variant, name)


def test_filter_fn_is_idempotent_and_headless():
    model = visionzoo.create_model("cbam_resnet18", depths=(1, 1, 1, 1))
    sd = model.state_dict()
    assert ca_resnet.checkpoint_filter_fn(sd, model).keys() == sd.keys()
    headless = visionzoo.create_model("cbam_resnet18", depths=(1, 1, 1, 1), num_classes=0)
    assert ca_resnet.checkpoint_filter_fn(headless.state_dict(), headless).keys() == headless.state_dict().keys()


def test_mismatched_checkpoint_names_the_problem():
    model = visionzoo.create_model("eca_resnet18", device="meta")
    other = visionzoo.create_model("eca_resnet34", device="meta").state_dict()
    with pytest.raises(visionzoo.convert.CheckpointError, match="missing|unexpected"):
        ca_resnet.checkpoint_filter_fn(other, model)


class _OfficialEca(torch.nn.Module):
    """The official eca_layer's parameter layout (``conv``) and math, as an independent oracle."""

    def __init__(self, k):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x):
        y = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * torch.sigmoid(y)


def _official_eca_mobilenet_v2(num_classes, width_mult):
    """torchvision's MobileNetV2 has the official ECA-MobileNetV2's key layout; append ECA to each
    inverted residual's ``conv`` sequence, as the official code does (k = 1 below 96 channels)."""
    model = torchvision.models.mobilenet_v2(num_classes=num_classes, width_mult=width_mult, round_nearest=1)
    rows = [c for _, c, n, _ in eca_mobilenetv2.MobileNetV2Cfg().settings for _ in range(n)]
    for block, c in zip(model.features[1:-1], rows):
        block.conv.append(_OfficialEca(1 if c < 96 else 3))
    return model


@pytest.mark.parametrize("width_mult", [1.0, 0.5])
def test_eca_mobilenet_v2_official_layout(width_mult):
    ref = _randomize_bn(_official_eca_mobilenet_v2(10, width_mult)).eval()
    model = visionzoo.from_official("eca_mobilenet_v2", dict(num_classes=10, width_mult=width_mult), ref.state_dict())
    assert visionzoo.count_params(model) == visionzoo.count_params(ref)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)


def test_from_official_rejects_what_it_cannot_build():
    with pytest.raises(NotImplementedError, match="BAM"):
        visionzoo.from_official("cbam_resnet", dict(block="BasicBlock", layers=[1, 1, 1, 1], network_type="ImageNet",
                                                    num_classes=10, att_type="BAM"))
    with pytest.raises(TypeError, match="unsupported official arguments"):
        visionzoo.from_official("eca_resnet", dict(block="ECABasicBlock", layers=[1, 1, 1, 1], bogus=1))
    with pytest.raises(ValueError, match="unknown family"):
        visionzoo.from_official("not_a_family", {})


def test_cifar_cbam_configuration():
    model = visionzoo.from_official("cbam_resnet", dict(block="BasicBlock", layers=[1, 1, 1, 1],
                                                        network_type="CIFAR10", num_classes=10, att_type="CBAM"))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.feature_info[0]["reduction"] == 1


def test_se_resnet_stride_layout():
    """SENet puts the stride in the first 1x1 (Caffe); ECA/CBAM in the 3x3 (torchvision v1.5)."""
    se = visionzoo.create_model("se_resnet50", device="meta")
    eca = visionzoo.create_model("eca_resnet50", device="meta")
    assert se.stages[1][0].conv1.stride == (2, 2) and se.stages[1][0].conv2.stride == (1, 1)
    assert eca.stages[1][0].conv1.stride == (1, 1) and eca.stages[1][0].conv2.stride == (2, 2)
    sex = visionzoo.create_model("se_resnext50_32x4d", device="meta")
    assert sex.stages[1][0].conv2.stride == (2, 2) and sex.stages[1][0].conv2.groups == 32
    assert re.fullmatch(r"ChannelsLastStem\(.*ceil_mode=True.*", repr(se.stem).replace("\n", " "))
