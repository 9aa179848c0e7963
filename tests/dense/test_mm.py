"""MMDetection / MMSegmentation with the visionzoo backbone, from their model-zoo base configs: RetinaNet and
Mask R-CNN (train_step, val_step, CocoMetric) and UperNet (train_step, val_step, IoUMetric), on the real mmcv (compiled
ops). Skips where mmcv's compiled ops, mmdet or mmseg are absent (mmcv 2.1 with ops is not on the package index as a
wheel; CI installs the one it finds in ../shared/wheels)."""

from pathlib import Path

import numpy as np
import pytest
import torch

import visionzoo
from visionzoo.models._registry import tiny_overrides

from . import boxes_and_masks

pytest.importorskip("mmcv.ops", reason="mmcv with compiled ops (mmcv._ext) is not installed")
pytest.importorskip("mmengine", reason="mmengine is not installed")

from mmengine.config import Config
from mmengine.optim import OptimWrapper
from mmengine.structures import InstanceData, PixelData
from mmengine.utils import import_modules_from_strings

H, W = 100, 84


def _zoo_config(package, path):
    """A model-zoo config shipped inside the installed package (``<package>/.mim/configs``)."""
    root = Path(__import__(package).__file__).parent / ".mim" / "configs"
    return Config.fromfile(str(root / path))


def _backbone(name, **kw):
    return {
        "type": "VisionzooBackbone",
        "model_name": name,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in tiny_overrides(name).items()},
        **kw,
    }


def _channels(name, out_indices=(0, 1, 2, 3)):
    from visionzoo.dense.mm import VisionzooBackbone

    return VisionzooBackbone(name, out_indices=out_indices, **tiny_overrides(name)).out_channels


def _train_and_val(model, data):
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    model.train()
    log_vars = model.train_step(data, optim)
    assert all(np.isfinite(float(v)) for v in log_vars.values()), log_vars
    model.eval()
    with torch.no_grad():
        return model.val_step(data)


def _det_data():
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks

    images, targets = boxes_and_masks(height=H, width=W)
    inputs, samples = [], []
    for i, (img, t) in enumerate(zip(images, targets)):
        s = DetDataSample(metainfo={"img_id": i, "img_shape": (H, W), "ori_shape": (H, W), "scale_factor": (1.0, 1.0)})
        masks = t["masks"].numpy()
        s.gt_instances = InstanceData(bboxes=t["boxes"], labels=t["labels"] - 1, masks=BitmapMasks(masks, H, W))
        s.set_metainfo(
            {
                "instances": [
                    {
                        "bbox": b,
                        "bbox_label": int(c) - 1,
                        "ignore_flag": 0,
                        "mask": [[b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]]],
                    }
                    for b, c in zip(t["boxes"].tolist(), t["labels"])
                ]
            }
        )
        inputs.append((img * 255).to(torch.uint8))
        samples.append(s)
    return {"inputs": inputs, "data_samples": samples}


@pytest.mark.parametrize(("kind", "name"), [("retinanet", "eca_resnet18"), ("mask-rcnn", "dinat_mini")])
def test_mmdet(kind, name, tmp_path):
    pytest.importorskip("mmdet", reason="mmdet is not installed")
    from mmdet.evaluation import CocoMetric
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    cfg = _zoo_config("mmdet", f"_base_/models/{kind}_r50_fpn.py")
    cfg.merge_from_dict({"custom_imports": {"imports": ["visionzoo.dense.mm"], "allow_failed_imports": False}})
    import_modules_from_strings(**cfg.custom_imports)  # what mmdet's tools do with custom_imports
    model_cfg = cfg.model
    model_cfg.backbone = _backbone(name, frozen_stages=1, norm_eval=True)
    model_cfg.neck.in_channels = _channels(name)
    model_cfg.neck.out_channels = 32
    if kind == "retinanet":
        model_cfg.bbox_head.update(num_classes=2, in_channels=32, feat_channels=32, stacked_convs=1)
        model_cfg.test_cfg.update(nms_pre=100, max_per_img=20, score_thr=0.0)  # untrained: keep every box
    else:
        model_cfg.rpn_head.update(in_channels=32, feat_channels=32)
        model_cfg.roi_head.bbox_roi_extractor.out_channels = 32
        model_cfg.roi_head.bbox_head.update(in_channels=32, fc_out_channels=64, num_classes=2)
        model_cfg.roi_head.mask_roi_extractor.out_channels = 32
        model_cfg.roi_head.mask_head.update(in_channels=32, conv_out_channels=32, num_convs=1, num_classes=2)
        model_cfg.train_cfg.rpn_proposal.update(nms_pre=100, max_per_img=50)
        model_cfg.test_cfg.rpn.update(nms_pre=100, max_per_img=50)
        model_cfg.test_cfg.rcnn.update(max_per_img=20, score_thr=0.0)
    model = MODELS.build(model_cfg)
    model.init_weights()
    trunk = model.backbone.body.model
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    data = _det_data()
    preds = _train_and_val(model, data)
    after = trunk.state_dict()
    # frozen_stages=1: stem and stage 0 unchanged; norm_eval: no BN statistics moved; the last stage trained
    assert all(
        torch.equal(before[k], after[k]) for k in before if k.startswith(("stem.", "stages.0.")) or "running" in k
    )
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("stages.3."))
    model.train()
    assert not any(m.training for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))  # norm_eval
    metric = CocoMetric(
        metric=["bbox", "segm"] if kind == "mask-rcnn" else ["bbox"], outfile_prefix=str(tmp_path / "coco")
    )
    metric.dataset_meta = {"classes": ("a", "b")}
    metric.process(data, [p.to_dict() for p in preds])
    results = metric.evaluate(len(preds))
    assert "coco/bbox_mAP" in results and (kind == "retinanet" or "coco/segm_mAP" in results)


def test_mmseg_upernet():
    pytest.importorskip("mmseg", reason="mmsegmentation is not installed")
    from mmseg.evaluation import IoUMetric
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules

    register_all_modules()
    __import__("visionzoo.dense.mm")
    cfg = _zoo_config("mmseg", "_base_/models/upernet_r50.py")
    name = "dinat_mini"
    model_cfg = cfg.model
    model_cfg.pop("pretrained")
    model_cfg.backbone = _backbone(name, with_cp=True)
    chs = _channels(name)
    bn = {"type": "BN", "requires_grad": True}  # SyncBN needs a process group
    model_cfg.decode_head.update(in_channels=chs, channels=16, num_classes=3, norm_cfg=bn)
    model_cfg.auxiliary_head.update(in_channels=chs[2], channels=16, num_classes=3, norm_cfg=bn)
    model_cfg.data_preprocessor.size = (64, 64)
    model = MODELS.build(model_cfg)
    model.init_weights()
    images, _ = boxes_and_masks(height=64, width=64)
    samples = []
    for i in range(len(images)):
        s = SegDataSample(metainfo={"img_shape": (64, 64), "ori_shape": (64, 64), "img_path": f"{i}.png"})
        s.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, 64, 64)))
        samples.append(s)
    data = {"inputs": [(img * 255).to(torch.uint8) for img in images], "data_samples": samples}
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    preds = _train_and_val(model, data)
    # every matrix / conv kernel of the (gradient-checkpointed) trunk took the step (a norm's unit weight may not
    # move by a representable amount in one step)
    after = model.backbone.state_dict()
    unchanged = [k for k, v in before.items() if k.endswith("weight") and v.ndim > 1 and torch.equal(v, after[k])]
    assert not unchanged, unchanged
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": ("a", "b", "c")}
    metric.process(data, [p.to_dict() for p in preds])
    assert "mIoU" in metric.evaluate(len(preds))


def test_pretrained_init_cfg_is_strict(tmp_path):
    pytest.importorskip("mmdet", reason="mmdet is not installed")
    from visionzoo.dense.mm import VisionzooBackbone

    name = "eca_resnet18"
    classifier = visionzoo.create_model(name, **tiny_overrides(name)).eval()
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in classifier.state_dict().items()}}, tmp_path / "c.pth")
    init = {"type": "Pretrained", "checkpoint": str(tmp_path / "c.pth"), "prefix": "backbone"}
    backbone = VisionzooBackbone(name, init_cfg=init, **tiny_overrides(name))
    backbone.init_weights()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = classifier.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
        for a, b in zip(backbone.eval()(x), expected):
            torch.testing.assert_close(a, b)
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, tmp_path / "bad.pth")
    bad = VisionzooBackbone(
        name, init_cfg={**init, "checkpoint": str(tmp_path / "bad.pth"), "prefix": None}, **tiny_overrides(name)
    )
    with pytest.raises(ValueError, match="layout"):
        bad.init_weights()
    with pytest.raises(ValueError, match="out_indices"):
        VisionzooBackbone(name, out_indices=(4,), **tiny_overrides(name))
