"""SE / ECA / CBAM against independent formulas and timm's layers."""
import pytest
import torch
import torch.nn.functional as F
from timm.layers.cbam import CbamModule
from timm.layers.eca import EcaModule

from visionzoo.blocks import (CbamAttn, EfficientChannelAttn, SqueezeExcite, create_channel_attn,
                              eca_kernel_size)


def _randomize(module):
    g = torch.Generator().manual_seed(0)
    for p in module.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.5)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(1, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(1, generator=g) + 0.5)
    return module.eval()


def test_se_formula():
    se = _randomize(SqueezeExcite(32, reduction=8))
    x = torch.randn(2, 32, 5, 7)
    w1, b1 = se.mlp.fc1.weight.flatten(1), se.mlp.fc1.bias
    w2, b2 = se.mlp.fc2.weight.flatten(1), se.mlp.fc2.bias
    gate = torch.sigmoid(F.relu(x.mean((2, 3)) @ w1.T + b1) @ w2.T + b2)
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])
    assert sum(p.numel() for p in se.parameters()) == 32 * 4 * 2 + 4 + 32


@pytest.mark.parametrize("channels,k", [(64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7), (8, 3)])
def test_eca_adaptive_kernel(channels, k):
    # |log2(C)/2 + 1/2|, truncated, made odd upward (ECA-Net eq. 12 with gamma=2, b=1)
    assert eca_kernel_size(channels) == k
    assert EfficientChannelAttn(channels).kernel_size == k


def test_eca_matches_timm_eca_module():
    ours = _randomize(EfficientChannelAttn(48, kernel_size=5))
    ref = EcaModule(None, kernel_size=5).eval()  # channels=None: timm then keeps the given kernel
    ref.conv.weight.data.copy_(ours.conv.weight.data)
    x = torch.randn(3, 48, 6, 4)
    torch.testing.assert_close(ours(x), ref(x))


def test_cbam_matches_timm_after_conversion():
    """timm's CbamModule has no MLP biases and pools [mean, max]; with zero biases and the spatial
    conv's input channels swapped the two modules compute the same function."""
    ours = _randomize(CbamAttn(64, reduction=16))
    for fc in (ours.channel.mlp.fc1, ours.channel.mlp.fc2):
        fc.bias.data.zero_()
    ref = CbamModule(64, rd_ratio=1 / 16).eval()
    ref.channel.fc1.weight.data.copy_(ours.channel.mlp.fc1.weight.data)
    ref.channel.fc2.weight.data.copy_(ours.channel.mlp.fc2.weight.data)
    ref.spatial.conv.conv.weight.data.copy_(ours.spatial.conv.weight.data.flip(1))
    ref.spatial.conv.bn.load_state_dict(ours.spatial.bn.state_dict())
    x = torch.randn(2, 64, 9, 11)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-5)


def test_cbam_official_details():
    cbam = CbamAttn(256)
    assert cbam.spatial.bn.momentum == 0.01 and cbam.spatial.bn.eps == 1e-5
    assert cbam.channel.mlp.fc1.bias is not None
    cbam.init_weights()
    assert torch.all(cbam.spatial.bn.weight == 0)  # spatial gate starts at sigmoid(0) = 0.5
    # channel pool is [max, mean]: a spatial conv reading only channel 0 sees the max
    cbam = CbamAttn(4, reduction=4).eval()
    torch.nn.init.zeros_(cbam.spatial.conv.weight)
    cbam.spatial.conv.weight.data[0, 0, 3, 3] = 1.0
    cbam.spatial.bn.reset_parameters()
    cbam.spatial.bn.reset_running_stats()
    x = torch.randn(1, 4, 5, 5)
    gated = cbam.channel(x)
    expected = gated * torch.sigmoid(gated.amax(1, keepdim=True) / (1 + 1e-5) ** 0.5)
    torch.testing.assert_close(cbam(x), expected)


def test_factory():
    assert isinstance(create_channel_attn("se", 16), SqueezeExcite)
    assert isinstance(create_channel_attn("eca", 16, kernel_size=3), EfficientChannelAttn)
    assert isinstance(create_channel_attn("cbam", 16), CbamAttn)
    assert isinstance(create_channel_attn(None, 16), torch.nn.Identity)
    with pytest.raises(ValueError, match="unknown attention 'sk'.*cbam"):
        create_channel_attn("sk", 16)
    with pytest.raises(ValueError, match="kernel_size must be a positive odd"):
        EfficientChannelAttn(16, kernel_size=4)
    with pytest.raises(ValueError, match="channels must be a positive int"):
        SqueezeExcite(0)
    with pytest.raises(TypeError):
        create_channel_attn("se", 16, not_an_arg=1)


@pytest.mark.parametrize("name", ["se", "eca", "cbam"])
def test_meta_device_and_dtype(name):
    m = create_channel_attn(name, 32, device="meta", dtype=torch.bfloat16)
    assert all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in m.parameters())
