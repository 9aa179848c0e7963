"""The ViTDet simple feature pyramid of the isotropic families (feature_pyramid="simple")."""

import pytest
import torch

import visionzoo
from visionzoo.models._registry import tiny_overrides

NAMES = ("nat_isotropic_small", "dinat_isotropic_small", "vitrpb_small")


def _features(name, **kwargs):
    return visionzoo.create_model(name, features_only=True, **tiny_overrides(name), **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_strides_4_to_32_from_the_last_map(name):
    model = _features(name, feature_pyramid="simple").eval()
    plain = _features(name, out_indices=(-1,)).eval()  # the last layer group at stride 16
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("model.pyramid.")})
    dim = plain.feature_info.channels()[0]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [dim // 4, dim // 2, dim, dim]
    x = torch.randn(2, 3, 100, 76)
    with torch.no_grad():
        levels, (last,) = model(x), plain(x)
    h, w = last.shape[-2:]  # 7 x 5: the 16-multiple padded input
    assert [lv.shape[-2:] for lv in levels] == [(4 * h, 4 * w), (2 * h, 2 * w), (h, w), ((h + 1) // 2, (w + 1) // 2)]
    torch.testing.assert_close(levels[2], last)
    torch.testing.assert_close(levels[3], torch.nn.functional.max_pool2d(last, 2, ceil_mode=True))


def test_selected_levels_drop_the_others_and_all_train():
    name = "vitrpb_small"
    model = _features(name, feature_pyramid="simple", out_indices=(1, 3)).train()
    assert model.feature_info.reduction() == [8, 32]
    assert not any(".pyramid.levels.0." in k for k in model.state_dict())
    outs = model(torch.randn(2, 3, 64, 64))
    assert [o.shape[1] for o in outs] == model.feature_info.channels()
    sum(o.mean() for o in outs).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


def test_classifier_checkpoint_loads_into_the_pyramid_model(tmp_path):
    name = "nat_isotropic_small"
    classifier = visionzoo.create_model(name, **tiny_overrides(name)).eval()
    torch.save({"state_dict": classifier.state_dict()}, tmp_path / "cls.pth")
    model = _features(name, feature_pyramid="simple", checkpoint_path=tmp_path / "cls.pth").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        last = classifier.forward_intermediates(x, indices=[-1], intermediates_only=True)[0]
        torch.testing.assert_close(model(x)[2], last)


def test_default_and_bad_values():
    model = _features("nat_isotropic_small")
    assert model.feature_info.reduction() == [16] * 4  # unchanged without the option
    with pytest.raises(ValueError, match="feature_pyramid"):
        _features("nat_isotropic_small", feature_pyramid="fpn")
