"""Generated hub configs and README table stay in sync with the registry; exports round-trip."""
import filecmp
import json
from pathlib import Path

import pytest
import timm
import torch

import visionzoo
from visionzoo import hub

REPO = Path(__file__).resolve().parents[1]


def test_committed_hub_configs_match_the_registry(tmp_path):
    hub.export(str(tmp_path))
    committed = REPO / "hub_configs"
    assert sorted(p.name for p in committed.iterdir()) == sorted(visionzoo.list_models()), \
        "hub_configs/ is stale: run `python -m visionzoo.hub export hub_configs/`"
    for name in visionzoo.list_models():
        for fname in ("config.json", "README.md"):
            assert filecmp.cmp(tmp_path / name / fname, committed / name / fname, shallow=False), \
                f"hub_configs/{name}/{fname} is stale: run `python -m visionzoo.hub export hub_configs/`"


def test_readme_model_table_is_generated():
    assert hub.update_readme(str(REPO / "README.md"), check=True), \
        "README model table is stale: run `python -m visionzoo.hub readme README.md`"


def test_config_schema():
    cfg = hub.hub_config("se_resnet50")
    assert cfg["architecture"] == "vz_se_resnet50" and cfg["num_classes"] == 1000 and cfg["num_features"] == 2048
    assert cfg["global_pool"] == "avg" and cfg["model_args"]["in_chans"] == 3
    pre = cfg["pretrained_cfg"]
    for key in ("input_size", "crop_pct", "interpolation", "mean", "std", "first_conv", "classifier", "license",
                "paper_ids"):
        assert key in pre, key
    assert cfg["visionzoo"]["param_count"] == 28_088_024
    assert 3.8 < cfg["visionzoo"]["gmacs"] < 3.9  # SENet paper: 3.87 GFLOPs (MACs)


def test_save_pretrained_local_dir_round_trip(tmp_path):
    model = visionzoo.create_model("eca_resnet18", num_classes=7, depths=(1, 1, 1, 1)).eval()
    hub.save_pretrained(model, str(tmp_path / "export"))
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["architecture"] == "vz_eca_resnet18" and config["model_args"]["depths"] == [1, 1, 1, 1]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        for loaded in (visionzoo.create_model(f"local-dir:{tmp_path / 'export'}"),
                       timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True)):
            torch.testing.assert_close(loaded.eval()(x), expected)
    feats = visionzoo.create_model(f"local-dir:{tmp_path / 'export'}", features_only=True, out_indices=(3,))
    with torch.no_grad():
        torch.testing.assert_close(feats.eval()(x)[0], model.forward_intermediates(x, indices=[3])[1][0])


def test_local_dir_with_checkpoint_path_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="cannot be combined"):
        visionzoo.create_model(f"local-dir:{tmp_path}", checkpoint_path=tmp_path / "x.pth")
