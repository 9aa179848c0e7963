"""The public API: create_model, list_models, model_info, checkpoint formats and their errors."""
import pytest
import timm
import torch
from safetensors.torch import save_file

import visionzoo

SMALL = dict(depths=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem_width=8)


def test_list_models_and_families():
    names = visionzoo.list_models()
    assert names == sorted(names) and "eca_resnet50" in names and not any(n.startswith("vz_") for n in names)
    assert visionzoo.list_models("cbam_*") == ["cbam_resnet101", "cbam_resnet18", "cbam_resnet34", "cbam_resnet50"]
    assert "ca_resnet" in visionzoo.list_families()
    assert visionzoo.list_models(family="eca_mobilenetv2") == ["eca_mobilenet_v2"]
    assert {"eca_resnet", "cbam_resnet", "senet"} <= set(visionzoo.list_official_families())
    with pytest.raises(ValueError, match="unknown family"):
        visionzoo.list_models(family="nope")


def test_names_prefix_and_tag_build_the_same_model():
    a = visionzoo.create_model("eca_resnet18", device="meta")
    b = visionzoo.create_model("vz_eca_resnet18.in1k", device="meta")
    c = timm.create_model("vz_eca_resnet18", device="meta")
    assert type(a) is type(b) is type(c) and a.state_dict().keys() == c.state_dict().keys()


def test_unknown_model_lists_closest_names():
    with pytest.raises(visionzoo.UnknownModelError, match="closest: eca_resnet50"):
        visionzoo.create_model("eca_resnt50")
    with pytest.raises(visionzoo.UnknownModelError, match="unknown tag"):
        visionzoo.create_model("eca_resnet50.in22k")


def test_bad_arguments():
    with pytest.raises(TypeError):
        visionzoo.create_model("eca_resnet18", device="meta", bogus=1)
    with pytest.raises(TypeError):  # misspelt architecture field
        visionzoo.create_model("eca_resnet18", device="meta", layer=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="block must be"):
        visionzoo.create_model("eca_resnet18", device="meta", block="bottle")
    with pytest.raises(ValueError, match="out_indices is only meaningful"):
        visionzoo.create_model("eca_resnet18", out_indices=(1,))


def test_pretrained_without_weights_says_how_to_load():
    with pytest.raises(RuntimeError, match="checkpoint_path=.*local-dir:.*hf-hub:"):
        visionzoo.create_model("halonet_h0", pretrained=True)  # the paper never released H0-H7


def test_model_info():
    info = visionzoo.model_info("eca_resnet50")
    assert info["params"] == 25_557_112 and info["family"] == "ca_resnet" and info["top1"] == 77.42
    assert [f["reduction"] for f in info["feature_info"]] == [2, 4, 8, 16, 32]  # the stem level first, as timm
    assert info["config"]["attn_kernel_sizes"] == (3, 5, 5, 7)


@pytest.mark.parametrize("fmt", ["pth", "pt", "safetensors", "bin"])
@pytest.mark.parametrize("wrap", ["none", "model", "state_dict", "module"])
def test_checkpoint_path_formats(tmp_path, fmt, wrap):
    src = visionzoo.create_model("cbam_resnet18", num_classes=6, **SMALL).eval()
    sd = src.state_dict()
    if wrap == "module":
        sd = {f"module.{k}": v for k, v in sd.items()}
    path = tmp_path / f"ckpt.{fmt}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd if wrap in ("none", "module") else {wrap: sd, "epoch": 3}, path)
    model = visionzoo.create_model("cbam_resnet18", checkpoint_path=path, **SMALL).eval()
    assert model.num_classes == 6
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x))


def test_checkpoint_then_features_only_and_new_head(tmp_path):
    src = visionzoo.create_model("eca_resnet18", **SMALL).eval()
    path = tmp_path / "w.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    feats = visionzoo.create_model("eca_resnet18", checkpoint_path=path, features_only=True, out_indices=(2, 3),
                                   **SMALL)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = src.forward_intermediates(x, indices=[2, 3], intermediates_only=True)
        for a, b in zip(feats.eval()(x), expected):
            torch.testing.assert_close(a, b)
    tuned = visionzoo.create_model("eca_resnet18", checkpoint_path=path, num_classes=3, **SMALL)
    assert tuned.num_classes == 3
    torch.testing.assert_close(tuned.stem.conv.weight, src.stem.conv.weight)


def test_corrupt_and_missing_checkpoints(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(visionzoo.convert.CheckpointError, match="could not be read"):
        visionzoo.create_model("eca_resnet18", checkpoint_path=bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        visionzoo.create_model("eca_resnet18", checkpoint_path=tmp_path / "missing.pth")
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(visionzoo.convert.CheckpointError, match="no state_dict"):
        visionzoo.create_model("eca_resnet18", checkpoint_path=empty)
    with pytest.raises(ValueError, match="either pretrained=True or checkpoint_path"):
        visionzoo.create_model("eca_resnet18", pretrained=True, checkpoint_path=bad)
