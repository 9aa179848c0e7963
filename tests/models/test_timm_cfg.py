"""Pretrained-cfg facts that timm's own ``tests/test_models.py`` (``test_model_default_cfgs``) checks, for every
registered model, on the meta device (no weights allocated, so full sizes are cheap): ``forward_features`` at the
cfg's ``input_size`` has ``pool_size`` spatially and ``num_features`` channels; ``first_conv`` and ``classifier``
name parameters. ``tools/timm_test_models.py`` runs timm's whole file on one model per family.
"""
import pytest
import torch

import visionzoo
from visionzoo.models._registry import MODELS

NAMES = visionzoo.list_models()  # halonet_h7 (600 px, a 18.75 map rounded up to 19) found the ceil in pool_size


@pytest.mark.parametrize("name", NAMES)
def test_pool_size_first_conv_classifier(name):
    cfg = MODELS[name].pretrained_cfg
    model = visionzoo.create_model(name, device="meta").eval()
    feats = model.forward_features(torch.empty(1, *cfg["input_size"], device="meta"))
    assert tuple(feats.shape[1:]) == (model.num_features, *cfg["pool_size"]), name
    params = dict(model.named_parameters())
    assert cfg["first_conv"] + ".weight" in params, name
    assert cfg["classifier"] + ".weight" in params, name
