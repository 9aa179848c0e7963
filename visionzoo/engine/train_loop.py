"""``train.py``: the training run, built on timm's library (transforms, optimizer and scheduler
factories, Mixup, losses, ModelEmaV3) with visionzoo's data, checkpoint and distributed helpers.

A run: parse and check the flags (one-line errors, nothing created yet) -> join the process group
-> datasets -> model -> optimizer / scheduler / EMA / AMP -> resume -> epochs of
``train_one_epoch`` + ``evaluate`` -> ``summary.csv``, the curves PNG and checkpoints, written by
rank 0 only. Outputs follow timm's layout (``args.yaml``, ``summary.csv``, ``last`` / ``model_best``
/ ``checkpoint-N`` ``.pth.tar``) under ``--output/--experiment``.

Resuming is exact: the data order and each sample's augmentation are functions of (seed, epoch,
index) (see :mod:`.data`), and the checkpoint carries every rank's RNG states, the optimizer,
scheduler, scaler and EMA, the update count and the running epoch meters. With ``--deterministic``
a run killed at any point and resumed from its last checkpoint ends with the same weights.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections import OrderedDict
from datetime import datetime

import numpy as np
import torch
import torch.nn as nn

from .. import __version__
from . import checkpoint as ckpt_mod
from . import data as vzdata
from . import distributed as vzdist
from .args import args_to_yaml, check_train_args, resolve_amp_dtype, train_parser
from .errors import DataError, NonFiniteLossError, TrainingInterrupted, UsageError
from .evaluate import autocast, evaluate
from .modeling import build_model
from .plot import plot_summary
from .progress import Progress, format_seconds
from .resume_args import parse_train_args, resume_run_dir

__all__ = ["train_main", "Trainer"]

_logger = logging.getLogger("visionzoo.train")


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _resolve_lr(args, world_size: int) -> float:
    """``--lr``, or timm's rule: ``--lr-base`` x (global batch / ``--lr-base-size``), linear or sqrt."""
    if args.lr is not None:
        return args.lr
    global_batch = args.batch_size * world_size * args.grad_accum_steps
    ratio = global_batch / args.lr_base_size
    scale = args.lr_base_scale or ("sqrt" if any(o in args.opt.lower() for o in ("ada", "lamb")) else "linear")
    return args.lr_base * (math.sqrt(ratio) if scale == "sqrt" else ratio)


class _StopFlag:
    """SIGTERM / SIGINT set a flag; the loop writes a recovery checkpoint at the next update and exits.
    A second signal interrupts at once."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class Trainer:
    def __init__(self, args, info: vzdist.DistInfo):
        self.args, self.info = args, info
        self.device = info.device
        self.stop = None

    # ---- set-up ---------------------------------------------------------------------------------
    def setup(self) -> None:
        from timm.data import Mixup, create_transform, resolve_data_config
        from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        from timm.optim import create_optimizer_v2, optimizer_kwargs
        from timm.scheduler import create_scheduler_v2, scheduler_kwargs
        from timm.utils import ModelEmaV3

        args, info = self.args, self.info
        if args.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        # data sources first: they give the class count, and a bad path fails before the model is built
        src_kw = dict(class_map=args.class_map, download=args.dataset_download)
        train_src = vzdata.build_source(args.dataset, args.data_dir, args.train_split, **src_kw)
        val_src = vzdata.build_source(args.dataset, args.data_dir, args.val_split, **src_kw)
        data_classes = len(train_src.classes) if train_src.classes is not None else None
        num_classes = args.num_classes or data_classes
        if num_classes is None:
            raise UsageError("cannot tell the number of classes of this dataset: pass --num-classes")
        if data_classes is not None and data_classes > num_classes:
            raise UsageError(f"--num-classes {num_classes} but the dataset has {data_classes} classes")

        # model: identical initial weights on every rank, then per-rank randomness
        _seed_all(args.seed)
        in_chans = args.input_size[0] if args.input_size else args.in_chans
        model, _ = build_model(
            args.model, checkpoint=args.initial_checkpoint or None, pretrained=args.pretrained,
            num_classes=num_classes, model_kwargs=args.model_kwargs, in_chans=in_chans, global_pool=args.gp,
            drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block)
        self.num_classes = num_classes
        if args.head_init_scale is not None or args.head_init_bias is not None:
            with torch.no_grad():
                head = model.get_classifier()
                if args.head_init_scale is not None:
                    head.weight.mul_(args.head_init_scale)
                if args.head_init_bias is not None:
                    nn.init.constant_(head.bias, args.head_init_bias)
        if args.grad_checkpointing:
            if not hasattr(model, "set_grad_checkpointing"):
                raise UsageError(f"{args.model} has no set_grad_checkpointing: drop --grad-checkpointing")
            model.set_grad_checkpointing(True)
        if args.layer_decay is not None and not hasattr(model, "group_matcher"):
            raise UsageError(f"{args.model} has no group_matcher, which --layer-decay needs")
        data_config = resolve_data_config(vars(args), model=model, verbose=False)
        self.data_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()}
        self.param_count = sum(p.numel() for p in model.parameters())

        model.to(self.device)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        if args.sync_bn and info.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.ema = None
        if args.model_ema:
            self.ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                                  device="cpu" if args.model_ema_force_cpu else None)

        self.lr = _resolve_lr(args, info.world_size)
        opt_cfg = dict(optimizer_kwargs(cfg=args), lr=self.lr, **(args.opt_kwargs or {}))
        self.optimizer = create_optimizer_v2(model, **opt_cfg)
        self.amp_dtype = resolve_amp_dtype(args, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 and \
            self.device.type == "cuda" else None

        # datasets, loaders, mixup, losses
        img_mode = args.input_img_mode or ("RGB" if data_config["input_size"][0] == 3 else "L")
        train_tf = create_transform(
            data_config["input_size"], is_training=True, no_aug=args.no_aug, train_crop_mode=args.train_crop_mode,
            scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
            color_jitter_prob=args.color_jitter_prob, grayscale_prob=args.grayscale_prob,
            gaussian_blur_prob=args.gaussian_blur_prob, auto_augment=args.aa,
            interpolation=args.train_interpolation, mean=data_config["mean"], std=data_config["std"],
            re_prob=args.reprob, re_mode=args.remode, re_count=args.recount)
        eval_tf = create_transform(**{k: data_config[k] for k in ("input_size", "interpolation", "mean", "std",
                                                                  "crop_pct", "crop_mode") if k in data_config})
        self.train_set = vzdata.SampleDataset(train_src, train_tf, img_mode)
        self.val_set = vzdata.SampleDataset(val_src, eval_tf, img_mode)
        per_rank = math.ceil(len(self.train_set) / info.world_size)
        if per_rank < args.batch_size:
            raise UsageError(f"--batch-size {args.batch_size} is larger than the {per_rank} training samples "
                             f"each of the {info.world_size} process(es) gets")
        common = dict(seed=args.seed, rank=info.rank, world_size=info.world_size, workers=args.workers,
                      pin_memory=args.pin_mem)
        self.train_loader = vzdata.build_loader(self.train_set, args.batch_size, training=True, **common)
        self.val_loader = vzdata.build_loader(self.val_set, args.validation_batch_size or args.batch_size,
                                              training=False, **common)
        self.batches_per_epoch = per_rank // args.batch_size
        self.updates_per_epoch = math.ceil(self.batches_per_epoch / args.grad_accum_steps)

        self.mixup = None
        if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
            self.mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                               prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                               label_smoothing=args.smoothing, num_classes=num_classes)
        if args.bce_loss:
            self.criterion = BinaryCrossEntropy(smoothing=0.0 if self.mixup else args.smoothing,
                                                target_threshold=args.bce_target_thresh)
        elif self.mixup is not None:
            self.criterion = SoftTargetCrossEntropy()  # mixup builds smoothed soft targets itself
        elif args.smoothing:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.criterion = self.criterion.to(self.device)

        self.scheduler, self.num_epochs = create_scheduler_v2(
            self.optimizer, **scheduler_kwargs(args, decreasing_metric=args.eval_metric == "loss"),
            updates_per_epoch=self.updates_per_epoch)

        # bookkeeping, then the resume state on top
        self.num_updates, self.start_epoch, self.start_batch = 0, 0, 0
        self.meters = dict(loss_sum=0.0, samples=0.0, skipped=0.0, skipped_updates=0.0, seconds=0.0)
        self.summary_rows: list[dict] = []
        self.results: list[dict] = []
        self.out_dir = None
        resume_ckpt = None
        if args.resume:
            try:
                path = ckpt_mod.find_resume(args.resume)
                resume_ckpt = ckpt_mod.load_checkpoint(path)
            except (ckpt_mod.CheckpointError, FileNotFoundError) as e:
                raise UsageError(str(e)) from None
            if not ckpt_mod.is_training_checkpoint(resume_ckpt):
                raise UsageError(f"--resume {path!r} is not a visionzoo training checkpoint "
                                 "(use --initial-checkpoint for weights only)")
            self.resume_path = path
        self.saver = None
        if info.primary:
            self.out_dir = self._output_dir(resume_ckpt)
        if resume_ckpt is not None:
            self._load_resume(resume_ckpt)

        # compile, then distribute (the raw model keeps the clean state_dict keys)
        train_model = vzdist.wrap_ddp(model, info)
        if args.torchcompile:
            train_model = torch.compile(train_model, backend=args.torchcompile, mode=args.torchcompile_mode)
        self.train_model = train_model
        if resume_ckpt is None:
            _seed_all(args.seed + info.rank)
        else:
            self._restore_rng(resume_ckpt)

    def _output_dir(self, resume_ckpt) -> str:
        args = self.args
        if resume_ckpt is not None:  # the run's own folder, wherever it now is (never the recorded path)
            out = resume_run_dir(args.resume)
            ckpt_mod.remove_stale_temporaries(out)
        else:
            name = args.experiment or "-".join([
                datetime.now().strftime("%Y%m%d-%H%M%S"), _safe(args.model),
                str(self.data_config["input_size"][-1])])
            out = os.path.join(args.output or os.path.join("output", "train"), name)
            if resume_ckpt is None and os.path.isdir(out) and os.listdir(out):
                i = 1
                while os.path.exists(f"{out}-{i}"):
                    i += 1
                out = f"{out}-{i}"
        os.makedirs(out, exist_ok=True)
        self.saver = ckpt_mod.CheckpointSaver(out, decreasing=args.eval_metric == "loss",
                                              max_history=args.checkpoint_hist)
        with open(os.path.join(out, "args.yaml"), "w") as f:
            f.write(args_to_yaml(args))
        return out

    def _load_resume(self, ckpt: dict) -> None:
        args = self.args
        try:
            self.model.load_state_dict(ckpt["state_dict"], strict=True)
        except RuntimeError as e:
            raise UsageError(f"--resume checkpoint does not fit {args.model}: {str(e).splitlines()[0]}") from None
        if self.ema is not None and ckpt.get("state_dict_ema") is not None:
            self.ema.module.load_state_dict(ckpt["state_dict_ema"])
        if not args.no_resume_opt:
            try:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError) as e:
                raise UsageError(f"--resume: the optimizer state does not fit ({e}); resume with the run's own "
                                 "--opt / --layer-decay / --weight-decay flags (its args.yaml: -c args.yaml), "
                                 "or pass --no-resume-opt") from None
            if ckpt.get("scheduler") is not None:
                self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.scaler is not None and ckpt.get("scaler") is not None:
                self.scaler.load_state_dict(ckpt["scaler"])
        self.num_updates = int(ckpt["num_updates"])
        self.start_epoch, self.start_batch = int(ckpt["next_epoch"]), int(ckpt["next_batch"])
        if self.start_batch:
            self.meters = {k: float(v) for k, v in ckpt["meters"].items()}
        self.results = list(ckpt.get("results") or [])
        if self.saver is not None and ckpt.get("saver"):
            self.saver.load_state_dict(ckpt["saver"])
        self.summary_rows = [r for r in self._read_summary() if int(r["epoch"]) < self.start_epoch]
        if self.start_epoch > 0 or self.start_batch > 0:
            self.scheduler.step(self.start_epoch)
            if self.num_updates:
                self.scheduler.step_update(self.num_updates)
        _logger.info("resumed from %s: epoch %d, batch %d, update %d", self.resume_path, self.start_epoch,
                     self.start_batch, self.num_updates)

    def _restore_rng(self, ckpt: dict) -> None:
        states = ckpt.get("rng") or []
        if len(states) == self.info.world_size:
            ckpt_mod.restore_rng(states[self.info.rank])
        else:
            _logger.warning("checkpoint was written by %d process(es), this run has %d: RNG streams restart, "
                            "so the resumed run is not bit-identical", len(states), self.info.world_size)
            _seed_all(self.args.seed + self.info.rank + 1_000 * (self.start_epoch + 1))

    def _read_summary(self) -> list[dict]:
        if self.out_dir is None:
            return []
        path = os.path.join(self.out_dir, "summary.csv")
        if not os.path.isfile(path):
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    # ---- state -----------------------------------------------------------------------------------
    def _state(self, next_epoch: int, next_batch: int, metric: float | None) -> dict:
        """The checkpoint dict (every rank calls this: the RNG states are gathered from all ranks)."""
        args = self.args
        rng = vzdist.gather_objects(ckpt_mod.capture_rng(), self.info)
        return dict(
            arch=args.model, visionzoo=__version__, version=ckpt_mod.CHECKPOINT_VERSION,
            epoch=next_epoch - 1 if next_batch == 0 else next_epoch, next_epoch=next_epoch, next_batch=next_batch,
            num_updates=self.num_updates, metric=metric, num_classes=self.num_classes,
            model_kwargs=dict(args.model_kwargs),
            model_args=dict(in_chans=self.data_config["input_size"][0], global_pool=args.gp),
            data_config=self.data_config, args=_plain(vars(args)), world_size=self.info.world_size,
            state_dict=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            state_dict_ema=self.ema.module.state_dict() if self.ema is not None else None,
            meters=dict(self.meters), results=list(self.results), rng=rng)

    # ---- one epoch -------------------------------------------------------------------------------
    def train_one_epoch(self, epoch: int, start_batch: int) -> OrderedDict:
        args, info = self.args, self.info
        model = self.train_model
        model.train()
        if self.mixup is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            self.mixup.mixup_enabled = False
        accum = args.grad_accum_steps
        n_batches = self.batches_per_epoch
        self.train_loader.sampler.set_epoch(epoch, start=start_batch * args.batch_size)
        progress = Progress(n_batches - start_batch, f"train {epoch}", _logger, enabled=info.primary,
                            log_interval=args.log_interval)
        group_bad = False
        t_start = time.perf_counter()
        for batch_idx, (images, targets, n_skipped) in enumerate(self.train_loader, start=start_batch):
            group_start = batch_idx - batch_idx % accum
            group_len = min(accum, n_batches - group_start)
            need_update = batch_idx + 1 == group_start + group_len
            self.meters["skipped"] += n_skipped
            loss = None
            if images is not None:
                images, targets = images.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
                if self.mixup is not None and self.mixup.mixup_enabled:
                    if len(images) % 2:  # a skipped sample left an odd batch: mixup pairs samples
                        images, targets = images[:-1], targets[:-1]
                    images, targets = self.mixup(images, targets)
                if args.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                no_sync = not need_update and info.distributed  # accumulate locally, all-reduce once per update
                with (model.no_sync() if no_sync else contextlib.nullcontext()):
                    with autocast(self.device, self.amp_dtype):
                        output = model(images)
                        loss = self.criterion(output, targets)
            loss_value = loss.item() if loss is not None else float("nan")
            empty, nonfinite = vzdist.any_true([loss is None, loss is not None and not math.isfinite(loss_value)],
                                               info)
            if nonfinite and not args.skip_nonfinite_loss:
                raise NonFiniteLossError(
                    f"non-finite loss ({loss_value if not math.isfinite(loss_value) else 'on another rank'}) at "
                    f"epoch {epoch}, batch {batch_idx} of {n_batches}, optimizer update {self.num_updates + 1}; "
                    "lower --lr, add --clip-grad / warmup, or pass --skip-nonfinite-loss to skip such updates")
            if empty or nonfinite:
                group_bad = True  # every rank drops this accumulation group together
            else:
                with (model.no_sync() if no_sync else contextlib.nullcontext()):
                    (self.scaler.scale(loss / group_len) if self.scaler else loss / group_len).backward()
                self.meters["loss_sum"] += loss_value * len(images)
                self.meters["samples"] += len(images)
            if need_update:
                self._optimizer_step(group_bad, epoch, batch_idx)
                group_bad = False
            lr = self.optimizer.param_groups[0]["lr"]
            progress.update(0 if images is None else len(images), loss=loss_value, lr=lr)
            if need_update and batch_idx + 1 < n_batches:
                stop = vzdist.any_true([self.stop.signum is not None], info)[0] if self.stop else False
                if stop or (args.recovery_interval and self.num_updates % args.recovery_interval == 0):
                    self.meters["seconds"] += time.perf_counter() - t_start
                    t_start = time.perf_counter()
                    state = self._state(epoch, batch_idx + 1, None)
                    if info.primary:
                        path = self.saver.save_recovery(state, epoch, batch_idx + 1)
                        _logger.info("recovery checkpoint %s", os.path.basename(path))
                    if stop:
                        raise TrainingInterrupted(f"stopped by signal at epoch {epoch}, batch {batch_idx + 1}; "
                                                  f"resume with --resume {self.out_dir or 'RUN_DIR'}")
        progress.close()
        self.meters["seconds"] += time.perf_counter() - t_start
        loss_sum, samples, skipped, skipped_updates, seconds = vzdist.all_reduce_sum(
            [self.meters[k] for k in ("loss_sum", "samples", "skipped", "skipped_updates", "seconds")], info)
        attempted = samples + skipped
        if not samples or skipped > args.max_skipped * attempted:
            raise DataError(f"epoch {epoch}: {int(skipped)} of {int(attempted)} training samples were skipped "
                            f"(unreadable, or their transform failed; see the warnings), over --max-skipped "
                            f"{args.max_skipped}; fix the data or raise --max-skipped")
        metrics = OrderedDict(loss=loss_sum / samples if samples else float("nan"),
                              samples_per_sec=samples / (seconds / info.world_size) if seconds else float("nan"),
                              skipped_samples=int(skipped))
        if args.skip_nonfinite_loss:
            metrics["skipped_updates"] = int(skipped_updates / info.world_size)
        self.meters = dict(loss_sum=0.0, samples=0.0, skipped=0.0, skipped_updates=0.0, seconds=0.0)
        return metrics

    def _optimizer_step(self, skip: bool, epoch: int, batch_idx: int) -> None:
        from timm.utils import dispatch_clip_grad
        args = self.args
        if skip:
            self.meters["skipped_updates"] += 1
            _logger.warning("skipped optimizer update %d (epoch %d, batch %d): non-finite loss or empty batch",
                            self.num_updates + 1, epoch, batch_idx)
        else:
            if self.scaler is not None:
                if args.clip_grad is not None:
                    self.scaler.unscale_(self.optimizer)
                    dispatch_clip_grad(self.model.parameters(), args.clip_grad, mode=args.clip_mode)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                if args.clip_grad is not None:
                    dispatch_clip_grad(self.model.parameters(), args.clip_grad, mode=args.clip_mode)
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.num_updates += 1
        if self.ema is not None and not skip:
            self.ema.update(self.model, step=self.num_updates)
        self.scheduler.step_update(num_updates=self.num_updates)

    # ---- the run ---------------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        from timm.utils import distribute_bn
        args, info = self.args, self.info
        if info.primary:
            _logger.info("model %s: %.2fM params, %d classes, input %s | data %s: %d train / %d val | "
                         "%d process(es) on %s, batch %d x %d x %d accum, lr %.3g | output %s",
                         args.model, self.param_count / 1e6, self.num_classes,
                         "x".join(map(str, self.data_config["input_size"])), args.dataset or args.data_dir,
                         len(self.train_set), len(self.val_set), info.world_size, self.device, args.batch_size,
                         info.world_size, args.grad_accum_steps, self.lr, self.out_dir)
        t0 = time.perf_counter()
        eval_metrics = None
        with _StopFlag() as self.stop:
            for epoch in range(self.start_epoch, self.num_epochs):
                start_batch = self.start_batch if epoch == self.start_epoch else 0
                train_metrics = self.train_one_epoch(epoch, start_batch)
                if info.distributed and args.dist_bn:
                    distribute_bn(self.model, info.world_size, args.dist_bn == "reduce")
                eval_metrics = self._evaluate(self.model, "eval")
                if self.ema is not None:
                    if info.distributed and args.dist_bn:
                        distribute_bn(self.ema.module, info.world_size, args.dist_bn == "reduce")
                    eval_metrics = self._evaluate(self.ema.module, "eval ema")
                metric = eval_metrics[args.eval_metric]
                lrs = [g["lr"] for g in self.optimizer.param_groups]  # the LR this epoch trained with
                self.scheduler.step(epoch + 1, metric)
                self._end_epoch(epoch, train_metrics, eval_metrics, metric, sum(lrs) / len(lrs))
                if vzdist.any_true([self.stop.signum is not None], info)[0] and epoch + 1 < self.num_epochs:
                    raise TrainingInterrupted(f"stopped by signal after epoch {epoch}; "
                                              f"resume with --resume {self.out_dir or 'RUN_DIR'}")
        if info.primary:
            elapsed = time.perf_counter() - t0
            best = self.saver.best or [float("nan"), -1]
            _logger.info("done in %s: best %s %.4f (epoch %d); last %s", format_seconds(elapsed),
                         args.eval_metric, best[0], best[1],
                         ", ".join(f"{k} {v:.4f}" for k, v in (eval_metrics or {}).items()
                                   if k in ("top1", "top5", "loss")))
        return self.results

    def _evaluate(self, model, desc: str) -> OrderedDict:
        m = evaluate(model, self.val_loader, device=self.device, amp_dtype=self.amp_dtype,
                     channels_last=self.args.channels_last, info=self.info, desc=desc,
                     log_interval=self.args.log_interval, logger=_logger)
        if not m["samples"]:
            raise DataError(f"{desc}: none of the {m['skipped_samples']} validation samples could be read "
                            f"(split {self.args.val_split!r}); fix the data before any checkpoint is written")
        return OrderedDict((k, m[k]) for k in ("loss", "top1", "top5", "samples", "skipped_samples"))

    def _end_epoch(self, epoch: int, train_metrics: dict, eval_metrics: dict, metric: float, lr: float) -> None:
        self.results.append(dict(epoch=epoch, train=dict(train_metrics), validation=dict(eval_metrics)))
        state = self._state(epoch + 1, 0, metric)  # collective: every rank
        if not self.info.primary:
            return
        row = OrderedDict(epoch=epoch)
        row.update((f"train_{k}", v) for k, v in train_metrics.items())
        row.update((f"eval_{k}", v) for k, v in eval_metrics.items() if k in ("loss", "top1", "top5"))
        row["lr"] = lr
        self.summary_rows.append(row)
        self._write_summary()
        best = self.saver.save_epoch(state, epoch, metric)
        _logger.info("epoch %d: train loss %.4f | eval loss %.4f top-1 %.2f top-5 %.2f | lr %.3g | %.0f img/s%s%s",
                     epoch, train_metrics["loss"], eval_metrics["loss"], eval_metrics["top1"], eval_metrics["top5"],
                     lr, train_metrics["samples_per_sec"], " | new best" if best else "",
                     f" | skipped {train_metrics['skipped_samples']} unreadable sample(s)"
                     if train_metrics["skipped_samples"] else "")

    def _write_summary(self) -> None:
        path = os.path.join(self.out_dir, "summary.csv")
        keys = list(OrderedDict.fromkeys(k for r in self.summary_rows for k in r))
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.summary_rows)
        os.replace(tmp, path)
        plot_summary(self.summary_rows, os.path.join(self.out_dir, "summary.png"),
                     title=f"{self.args.model} on {self.args.dataset or os.path.basename(str(self.args.data_dir))}")


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.split("/")[-1])


def train_main(argv=None) -> int:
    parser = train_parser()
    args = parse_train_args(parser, argv)
    try:
        args.dataset = vzdata.resolve_dataset_name(args.dataset, args.data_dir)
        check_train_args(args)
        vzdata.check_data_args(args.dataset, args.data_dir, [args.train_split, args.val_split],
                               args.dataset_download)
    except UsageError as e:
        parser.error(str(e))
    info = vzdist.init(args.device)
    logging.basicConfig(level=logging.INFO if info.primary else logging.WARNING, stream=sys.stdout,
                        format="%(message)s" if not info.distributed else f"[rank {info.rank}] %(message)s")
    trainer = Trainer(args, info)
    try:
        trainer.setup()
        results = trainer.fit()
    except UsageError as e:
        if info.primary:
            print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, DataError) as e:
        if info.primary:
            print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        if info.primary:
            print(f"{parser.prog}: {e}", file=sys.stderr)
        return 130
    finally:
        vzdist.shutdown()
    if info.primary:
        print("--result")  # timm's marker; then a JSON list, one epoch per line
        print("[" + ",\n ".join(json.dumps(r) for r in results) + "]")
    return 0
