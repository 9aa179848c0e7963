"""Every example of the README's "Detection and segmentation" section runs as written (each skips where its
framework is not installed)."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "Detection and segmentation"
#: the first comment word of each example -> the module it needs
NEEDS = {
    "torchvision": "torchvision",
    "segmentation_models_pytorch": "segmentation_models_pytorch",
    "transformers": "transformers",
    "detectron2": "detectron2",
    "MMDetection": "mmdet",
}


def _blocks() -> list[str]:
    body = README.read_text().split(f"\n## {SECTION}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)


def test_one_example_per_framework():
    assert [b.split()[1].rstrip(":") for b in _blocks()] == list(NEEDS)


@pytest.mark.parametrize("framework", list(NEEDS))
def test_example_runs(framework):
    block = next(b for b in _blocks() if b.split()[1].rstrip(":") == framework)
    if framework == "MMDetection":
        pytest.importorskip("mmcv.ops", reason="mmcv with compiled ops is not installed")
    pytest.importorskip(NEEDS[framework], reason=f"{NEEDS[framework]} is not installed")
    scope: dict = {}
    exec(compile(block, f"README.md ({SECTION}: {framework})", "exec"), scope)  # noqa: S102 (the README example)
    result = {
        "torchvision": "detections",
        "segmentation_models_pytorch": "masks",
        "transformers": "out",
        "detectron2": "instances",
        "MMDetection": "feats",
    }[framework]
    assert scope[result] is not None
    if framework == "MMDetection":
        assert [f.shape[1] for f in scope["feats"]] == [256, 512, 1024, 2048]
    if framework == "segmentation_models_pytorch":
        assert scope["masks"].shape == (1, 21, 128, 128) and torch.isfinite(scope["masks"]).all()
