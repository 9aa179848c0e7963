"""Evaluation: the loop shared by training and ``validate.py``, and ``validate.py`` itself.

``validate.py`` evaluates one or many models — names, fnmatch globs over visionzoo's names,
``local-dir:`` / ``hf-hub:`` exports, checkpoint files or folders of them — and reports timm's
result fields (``model, top1, top1_err, top5, top5_err, param_count, img_size, crop_pct,
interpolation``) plus ``loss``, ``samples_per_sec`` (end to end), ``infer_samples_per_sec``
(model only), ``gmacs`` / ``gflops`` (one image, torch's flop counter, reference backend),
``num_samples`` and ``skipped_samples``.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import glob
import json
import logging
import os
import sys
import time
from collections import OrderedDict

import torch
import torch.nn.functional as F

from .. import list_models
from ..ops import use_backend
from . import data as vzdata
from .args import check_model_name, check_validate_args, parse_args, resolve_amp_dtype, validate_parser
from .distributed import DistInfo, all_reduce_sum, resolve_device
from .errors import UsageError
from .modeling import build_model
from .progress import Progress

__all__ = ["evaluate", "count_flops", "validate_main"]

_logger = logging.getLogger("visionzoo.validate")


def autocast(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, *, device: torch.device, amp_dtype=None, channels_last: bool = False,
             info: DistInfo = DistInfo(), desc: str = "eval", log_interval: int = 50,
             logger: logging.Logger = _logger) -> dict:
    """Loss, top-1, top-5 (percent) over ``loader``, summed exactly over ranks."""
    was_training = model.training
    model.eval()
    loss_sum = c1 = c5 = n = skipped = 0.0
    infer_time = 0.0
    progress = Progress(len(loader), desc, logger, enabled=info.primary, log_interval=log_interval)
    start = time.perf_counter()
    for images, targets, n_skipped in loader:
        skipped += n_skipped
        if images is None:
            progress.update(0)
            continue
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        with autocast(device, amp_dtype):
            output = model(images)
        if isinstance(output, (tuple, list)):
            output = output[0]
        output = output.float()
        loss_sum += F.cross_entropy(output, targets, reduction="sum").item()  # .item() syncs: timing is fair
        infer_time += time.perf_counter() - t0
        k = min(5, output.shape[1])
        correct = output.topk(k, dim=1).indices.eq(targets[:, None])
        c1 += correct[:, 0].sum().item()
        c5 += correct.any(dim=1).sum().item()
        n += len(targets)
        progress.update(len(targets), acc1=100.0 * c1 / n)
    progress.close()
    seconds = time.perf_counter() - start
    loss_sum, c1, c5, n, skipped, seconds, infer_time = all_reduce_sum(
        [loss_sum, c1, c5, n, skipped, seconds, infer_time], info)
    seconds, infer_time = seconds / info.world_size, infer_time / info.world_size
    model.train(was_training)
    nan = float("nan")
    return OrderedDict(
        loss=loss_sum / n if n else nan, top1=100.0 * c1 / n if n else nan, top5=100.0 * c5 / n if n else nan,
        samples=int(n), skipped_samples=int(skipped), seconds=seconds,
        samples_per_sec=n / seconds if seconds else nan, infer_samples_per_sec=n / infer_time if infer_time else nan)


def count_flops(model: torch.nn.Module, input_size) -> float | None:
    """FLOPs of one image (2 per multiply-accumulate), on a meta-device copy through the reference backend."""
    from torch.utils.flop_counter import FlopCounterMode
    try:
        meta = copy.deepcopy(model).to("meta").eval()
        x = torch.empty((1, *input_size), device="meta")
        with use_backend("reference"), FlopCounterMode(display=False) as counter, torch.no_grad():
            meta(x)
        return float(counter.get_total_flops())
    except Exception as e:  # noqa: BLE001 - a model the counter cannot trace still gets evaluated
        _logger.warning("could not count FLOPs: %s: %s", type(e).__name__, e)
        return None


# ---- validate.py -------------------------------------------------------------------------------
def _expand_checkpoints(paths: list[str]) -> list[str]:
    out = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(p for ext in ("*.pth.tar", "*.pth", "*.pt", "*.bin", "*.safetensors")
                           for p in glob.glob(os.path.join(path, ext)))
            if not found:
                raise UsageError(f"--checkpoint {path!r}: no *.pth.tar / *.pth / *.safetensors files in it")
            out += found
        else:
            out.append(path)
    return out


def _expand_models(names: list[str]) -> list[str]:
    out = []
    for name in names:
        if any(ch in name for ch in "*?[") and ":" not in name:
            matched = list_models(name)
            if not matched:
                raise UsageError(f"--model {name!r} matches no visionzoo model")
            out += matched
        else:
            check_model_name(name)
            out.append(name)
    return out


def _jobs(args) -> list[tuple[str | None, str | None]]:
    """(model name, checkpoint) pairs to evaluate."""
    models = _expand_models(args.model)
    ckpts = _expand_checkpoints(args.checkpoint)
    if ckpts:
        if len(models) > 1:
            raise UsageError("with --checkpoint, pass at most one --model (or none: the checkpoint names it)")
        return [(models[0] if models else None, c) for c in ckpts]
    return [(m, None) for m in models]


def _validate_one(args, name: str | None, checkpoint: str | None, device: torch.device) -> OrderedDict:
    from timm.data import create_transform, resolve_data_config
    synthetic = args.dataset == vzdata.SYNTHETIC
    if checkpoint is None and not args.pretrained and not synthetic and not name.startswith(
            ("local-dir:", "hf-hub:", "hf_hub:")):
        raise UsageError(f"{name}: no weights to evaluate; pass --checkpoint, --pretrained, a local-dir:/hf-hub: "
                         "source, or --synthetic for a throughput run")
    model, ckpt = build_model(name, checkpoint=checkpoint, pretrained=args.pretrained, use_ema=args.use_ema,
                              num_classes=args.num_classes, model_kwargs=args.model_kwargs,
                              in_chans=args.in_chans, global_pool=args.gp)
    label = name or ckpt["arch"]
    cfg_args = vars(args).copy()
    explicit = any(cfg_args.get(k) for k in ("img_size", "input_size", "crop_pct", "mean", "std", "interpolation"))
    if ckpt is not None and ckpt.get("data_config") and not explicit:
        # a training checkpoint evaluates at the input size it was trained for, not the model's default
        data_config = dict(ckpt["data_config"])
        data_config["input_size"] = tuple(data_config["input_size"])
    else:
        data_config = resolve_data_config(cfg_args, model=model, use_test_size=not args.use_train_size)
    model = model.to(device).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    eval_model = torch.compile(model, backend=args.torchcompile, mode=args.torchcompile_mode) \
        if args.torchcompile else model
    num_classes = model.num_classes
    transform = create_transform(**{k: data_config[k] for k in ("input_size", "interpolation", "mean", "std",
                                                                "crop_pct", "crop_mode") if k in data_config})
    img_mode = args.input_img_mode or ("RGB" if data_config["input_size"][0] == 3 else "L")
    dataset = vzdata.build_dataset(args.dataset, args.data_dir, args.split, transform, class_map=args.class_map,
                                   download=args.dataset_download, num_samples=args.num_samples, img_mode=img_mode,
                                   input_size=data_config["input_size"], num_classes=max(num_classes, 1))
    if not synthetic and dataset.num_classes and dataset.num_classes > num_classes:
        raise UsageError(f"{label} has {num_classes} classes but the dataset has {dataset.num_classes}")
    loader = vzdata.build_loader(dataset, args.batch_size, training=False, seed=args.seed, workers=args.workers,
                                 pin_memory=args.pin_mem)
    _logger.info("%s: %d samples of %s at %s", label, len(dataset), args.dataset or "folder",
                 "x".join(map(str, data_config["input_size"])))
    metrics = evaluate(eval_model, loader, device=device, amp_dtype=resolve_amp_dtype(args, device),
                       channels_last=args.channels_last, desc=f"eval {label}", log_interval=args.log_interval)
    flops = None if args.no_flops else count_flops(model, data_config["input_size"])
    params = sum(p.numel() for p in model.parameters())
    acc = (lambda v: None) if synthetic else (lambda v: round(v, 4))
    result = OrderedDict(model=label)
    if synthetic:
        result.update(top1=None, top1_err=None, top5=None, top5_err=None, loss=None)
    else:
        result.update(top1=acc(metrics["top1"]), top1_err=acc(100 - metrics["top1"]), top5=acc(metrics["top5"]),
                      top5_err=acc(100 - metrics["top5"]), loss=round(metrics["loss"], 6))
    result.update(
        param_count=round(params / 1e6, 2), img_size=data_config["input_size"][-1],
        crop_pct=data_config.get("crop_pct"), interpolation=data_config.get("interpolation"),
        samples_per_sec=round(metrics["samples_per_sec"], 2),
        infer_samples_per_sec=round(metrics["infer_samples_per_sec"], 2),
        gmacs=round(flops / 2e9, 4) if flops is not None else None,
        gflops=round(flops / 1e9, 4) if flops is not None else None,
        num_samples=metrics["samples"], skipped_samples=metrics["skipped_samples"])
    if checkpoint:
        result["checkpoint"] = checkpoint
    return result


def _write_results(results: list[dict], path: str, fmt: str) -> None:
    fmt = fmt or ("json" if path.lower().endswith(".json") else "csv")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        if fmt == "json":
            json.dump(results, f, indent=2)
        else:
            keys = list(OrderedDict.fromkeys(k for r in results for k in r))
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            for r in results:
                writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    os.replace(tmp, path)


def validate_main(argv=None) -> int:
    parser = validate_parser()
    args = parse_args(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        if args.synthetic:
            args.dataset = vzdata.SYNTHETIC
        args.dataset = vzdata.resolve_dataset_name(args.dataset, args.data_dir)
        check_validate_args(args)
        vzdata.check_data_args(args.dataset, args.data_dir, [args.split], args.dataset_download,
                               allow_root_fallback=True)
        jobs = _jobs(args)
    except UsageError as e:
        parser.error(str(e))
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    results, failures = [], []
    for name, checkpoint in jobs:
        try:
            result = _validate_one(args, name, checkpoint, device)
        except UsageError as e:
            if len(jobs) == 1:
                parser.error(str(e))
            _logger.warning("skipping %s: %s", checkpoint or name, e)
            failures.append(dict(model=name, checkpoint=checkpoint, error=str(e)))
            continue
        results.append(result)
        if result["top1"] is not None:
            _logger.info(" * %s: top-1 %.2f%% (err %.2f) top-5 %.2f%% loss %.4f | %.0f img/s, %.2fM params, "
                         "%s GFLOPs", result["model"], result["top1"], result["top1_err"], result["top5"],
                         result["loss"], result["samples_per_sec"], result["param_count"], result["gflops"])
        else:
            _logger.info(" * %s: %.0f img/s (model only %.0f img/s), %.2fM params, %s GFLOPs", result["model"],
                         result["samples_per_sec"], result["infer_samples_per_sec"], result["param_count"],
                         result["gflops"])
    if len(results) > 1:
        results.sort(key=lambda r: -(r["top1"] or 0.0))
    if args.results_file and results:
        _write_results(results, args.results_file, args.results_format)
    print("--result")
    print(json.dumps(results[0] if len(results) == 1 and len(jobs) == 1 else results, indent=4))
    return 1 if failures else 0
