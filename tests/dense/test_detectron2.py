"""detectron2 with visionzoo backbones: Faster R-CNN, Mask R-CNN and RetinaNet from yacs configs (one train step,
then eval through COCOEvaluator), the LazyConfig form, strict classifier weights. Skips where detectron2 is absent
(it is not on the package index; CI installs the wheel it finds in ../shared/wheels)."""

import pytest
import torch

import visionzoo
from visionzoo.models._registry import tiny_overrides

from . import boxes_and_masks

pytest.importorskip("detectron2", reason="detectron2 is not installed (not on the package index: build it from source)")

from detectron2.config import LazyCall, get_cfg, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.modeling import FPN, build_model
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances
from detectron2.utils.events import EventStorage

from visionzoo.dense.detectron2 import VisionzooBackbone, add_visionzoo_config

H, W = 100, 84
DATASET = "visionzoo_tiny_shapes"


def _register_dataset():
    if DATASET in DatasetCatalog.list():
        return
    images, targets = boxes_and_masks(height=H, width=W)

    def records():
        out = []
        for i, t in enumerate(targets):
            anns = [
                {
                    "bbox": b,
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "category_id": int(c) - 1,
                    "segmentation": [[b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]]],
                }
                for b, c in zip(t["boxes"].tolist(), t["labels"])
            ]
            out.append({"file_name": f"synthetic_{i}.png", "image_id": i, "height": H, "width": W, "annotations": anns})
        return out

    DatasetCatalog.register(DATASET, records)
    MetadataCatalog.get(DATASET).set(thing_classes=["a", "b"])
    return images


def _inputs():
    images, targets = boxes_and_masks(height=H, width=W)
    batch = []
    for i, (img, t) in enumerate(zip(images, targets)):
        inst = Instances(
            (H, W), gt_boxes=Boxes(t["boxes"]), gt_classes=t["labels"] - 1, gt_masks=BitMasks(t["masks"].bool())
        )
        batch.append({"image": img * 255, "instances": inst, "height": H, "width": W, "image_id": i})
    return batch


def _cfg(name, kind):
    cfg = add_visionzoo_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.VISIONZOO.NAME = name
    for k, v in tiny_overrides(name).items():
        cfg.MODEL.VISIONZOO.KWARGS[k] = list(v) if isinstance(v, tuple) else v
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    if kind == "retinanet":
        cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
        cfg.MODEL.BACKBONE.NAME = "build_retinanet_visionzoo_fpn_backbone"
        cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
        cfg.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
        cfg.MODEL.RETINANET.NUM_CLASSES = 2
        cfg.MODEL.RETINANET.NUM_CONVS = 1
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[x, x * 2 ** (1 / 3), x * 2 ** (2 / 3)] for x in (32, 64, 128, 256, 512)]
        return cfg
    cfg.MODEL.BACKBONE.NAME = "build_visionzoo_fpn_backbone"
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    if kind == "mask":
        cfg.MODEL.MASK_ON = True
        cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
        cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 1
        cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
        cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
    return cfg


@pytest.mark.parametrize(
    ("name", "kind"), [("eca_resnet18", "faster"), ("dinat_mini", "mask"), ("eca_resnet18", "retinanet")]
)
def test_train_step_and_coco_eval(name, kind, tmp_path):
    _register_dataset()
    model = build_model(_cfg(name, kind)).train()
    bottom_up = model.backbone.bottom_up
    assert isinstance(bottom_up, VisionzooBackbone) and bottom_up.size_divisibility == 32
    with EventStorage():
        losses = model(_inputs())
    assert (kind == "mask") == ("loss_mask" in losses)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    trunk = bottom_up.body.model
    assert all(p.grad is None for p in [*trunk.stem.parameters(), *trunk.stages[0].parameters()])  # FREEZE_AT 2
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trunk.stages[-1].parameters())
    model.eval()
    evaluator = COCOEvaluator(
        DATASET, tasks=("bbox", "segm") if kind == "mask" else ("bbox",), distributed=False, output_dir=str(tmp_path)
    )
    inputs = [{k: v for k, v in x.items() if k != "instances"} for x in _inputs()]
    results = inference_on_dataset(model, [[x] for x in inputs], evaluator)
    assert "AP" in results["bbox"] and (kind != "mask" or "AP" in results["segm"])


def test_backbone_interface_and_lazy_config():
    name = "eca_resnet18"
    lazy = LazyCall(FPN)(
        bottom_up=LazyCall(VisionzooBackbone)(
            name=name, out_features=["res3", "res4", "res5"], freeze_at=1, **tiny_overrides(name)
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=16,
        top_block=LazyCall(LastLevelMaxPool)(),
    )
    fpn = instantiate(lazy)
    shapes = fpn.bottom_up.output_shape()
    assert list(shapes) == ["res3", "res4", "res5"] and [s.stride for s in shapes.values()] == [8, 16, 32]
    assert fpn.bottom_up.padding_constraints["size_divisiblity"] == 32
    out = fpn(torch.randn(1, 3, 96, 64))
    assert list(out) == ["p3", "p4", "p5", "p6"] and out["p3"].shape == (1, 16, 12, 8)
    with pytest.raises(ValueError, match="out_features"):
        VisionzooBackbone(name, out_features=["res1"], **tiny_overrides(name))


def test_weights_load_strictly_through_the_converters(tmp_path):
    name = "eca_resnet18"
    classifier = visionzoo.create_model(name, **tiny_overrides(name)).eval()
    torch.save({"state_dict": classifier.state_dict()}, tmp_path / "cls.pth")
    backbone = VisionzooBackbone(name, weights=str(tmp_path / "cls.pth"), **tiny_overrides(name)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = classifier.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
        for a, b in zip(backbone(x).values(), expected):
            torch.testing.assert_close(a, b)
    torch.save({"state_dict": {"not.a.key": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(Exception, match="layout"):
        VisionzooBackbone(name, weights=str(tmp_path / "bad.pth"), **tiny_overrides(name))
