"""Command-line flags of ``train.py`` and ``validate.py``: timm's names and defaults (reference/ecosystem.md §5).

A YAML file given with ``-c/--config`` (e.g. a previous run's ``args.yaml``) supplies the defaults;
flags on the command line override it. :func:`check_train_args` / :func:`check_validate_args`
reject bad values and incompatible combinations before any work, as one-line errors.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys

import torch

from .errors import UsageError

__all__ = ["train_parser", "validate_parser", "parse_args", "parse_kwargs", "check_train_args",
           "check_validate_args", "args_to_yaml", "resolve_amp_dtype"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line (``prog: error: ...``) and exits with status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _kv(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return text


def parse_kwargs(items) -> dict:
    """``["depths=(1, 1, 1, 1)", "stem_width=16", "attn=eca"]`` -> dict; values through
    ``ast.literal_eval`` (bare words stay strings), lists become tuples (configs are frozen)."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return {k: _freeze(v) for k, v in items.items()}
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise UsageError(f"--model-kwargs / --opt-kwargs expect key=value, got {item!r}")
        try:
            out[key] = _freeze(ast.literal_eval(value))
        except (ValueError, SyntaxError) as e:
            if value.strip()[:1] in _LITERAL_START:  # meant as a literal, not a bare word: say why it is not one
                reason = e.msg if isinstance(e, SyntaxError) else str(e).splitlines()[0]
                raise UsageError(f"--model-kwargs / --opt-kwargs {key}={value}: {value!r} is not a Python literal "
                                 f"({reason}); write e.g. {key}=(1,1,1,1), {key}=0.1 or {key}=name") from None
            out[key] = value
    return out


_LITERAL_START = tuple("([{'\"-+.0123456789")


def _freeze(v):
    return tuple(_freeze(x) for x in v) if isinstance(v, (list, tuple)) else v


def _common(p: argparse.ArgumentParser, several_models: bool = False) -> None:
    p.add_argument("-c", "--config", default="", metavar="FILE", help="YAML file of flag defaults (e.g. args.yaml)")
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None, metavar="DIR", help="dataset root (ImageFolder tree with split folders)")
    g.add_argument("--dataset", default="", metavar="NAME",
                   help="'' (ImageFolder in --data-dir), torch/NAME (torchvision on disk), digits (embedded), "
                        "synthetic; default: digits when --data-dir is not given either")
    g.add_argument("--class-map", default="", metavar="FILE", help="class name -> index file (ImageFolder)")
    g.add_argument("--dataset-download", action="store_true", help="let torchvision download torch/NAME datasets")
    g.add_argument("--input-img-mode", default=None, help="PIL mode images are converted to (default RGB / L)")
    g.add_argument("-j", "--workers", type=int, default=4, help="data loader worker processes (0: in-process)")
    g.add_argument("--pin-mem", action="store_true", help="pin host memory for faster GPU transfer")
    g = p.add_argument_group("model")
    if several_models:
        g.add_argument("--model", "-m", nargs="*", default=[],
                       help="model names (visionzoo or timm), fnmatch globs, local-dir:PATH, hf-hub:ID")
    else:
        g.add_argument("--model", "-m", default=None, help="model name (visionzoo or timm), local-dir:PATH, hf-hub:ID")
    g.add_argument("--pretrained", action="store_true", help="start from the published weights")
    g.add_argument("--num-classes", type=int, default=None, help="classes (default: the dataset's)")
    g.add_argument("--gp", default=None, help="global pool type (avg, max, avgmax, catavgmax, '')")
    g.add_argument("--img-size", type=int, default=None, help="input image size (default: the model's)")
    g.add_argument("--in-chans", type=int, default=None, help="input channels")
    g.add_argument("--input-size", type=int, nargs=3, default=None, metavar=("C", "H", "W"), help="full input size")
    g.add_argument("--crop-pct", type=float, default=None, help="eval center-crop fraction")
    g.add_argument("--crop-mode", default=None, help="eval crop mode (center, squash, border)")
    g.add_argument("--mean", type=float, nargs="+", default=None, help="normalisation mean")
    g.add_argument("--std", type=float, nargs="+", default=None, help="normalisation std")
    g.add_argument("--interpolation", default="", help="resize interpolation (default: the model's)")
    g.add_argument("--model-kwargs", nargs="*", default={}, type=_kv, metavar="KEY=VALUE",
                   help="extra create_model arguments, values as Python literals: depths=(1,1,1,1) stem_width=16")
    g = p.add_argument_group("device / precision")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    g.add_argument("--amp", action="store_true", help="automatic mixed precision")
    g.add_argument("--amp-dtype", default=None, choices=("float16", "bfloat16"),
                   help="AMP dtype (default: bfloat16 on CPU, float16 on CUDA)")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    g.add_argument("--torchcompile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the model (backend, default inductor)")
    g.add_argument("--torchcompile-mode", default=None, help="torch.compile mode")
    g.add_argument("--log-interval", type=int, default=50, help="batches between log lines (non-interactive)")


def train_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="train.py", description="Train a visionzoo (or timm) model; timm's flags and output files.")
    _common(p)
    g = p.add_argument_group("data splits")
    g.add_argument("--train-split", default="train")
    g.add_argument("--val-split", default="validation")
    g = p.add_argument_group("weights")
    g.add_argument("--initial-checkpoint", "--checkpoint", dest="initial_checkpoint", default="", metavar="PATH",
                   help="start from these weights (visionzoo, timm or official checkpoint)")
    g.add_argument("--resume", default="", metavar="PATH",
                   help="resume the full training state from a checkpoint, or the newest one in a run directory")
    g.add_argument("--no-resume-opt", action="store_true", help="with --resume: restart optimizer/scheduler state")
    g.add_argument("--grad-checkpointing", action="store_true", help="activation checkpointing")
    g.add_argument("--head-init-scale", type=float, default=None)
    g.add_argument("--head-init-bias", type=float, default=None)
    g.add_argument("--drop", type=float, default=None, help="dropout before the classifier")
    g.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate")
    g.add_argument("--drop-block", type=float, default=None, help="drop-block rate (models that have it)")
    g = p.add_argument_group("batch")
    g.add_argument("-b", "--batch-size", type=int, default=128, help="per-process batch size")
    g.add_argument("-vb", "--validation-batch-size", type=int, default=None)
    g.add_argument("--grad-accum-steps", type=int, default=1)
    g = p.add_argument_group("optimizer")
    g.add_argument("--opt", default="sgd", help="any timm optimizer: sgd, momentum, adamw, lamb, lion, ...")
    g.add_argument("--opt-eps", type=float, default=None)
    g.add_argument("--opt-betas", type=float, nargs="+", default=None)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=2e-5)
    g.add_argument("--clip-grad", type=float, default=None, help="gradient clipping threshold")
    g.add_argument("--clip-mode", default="norm", choices=("norm", "value", "agc"))
    g.add_argument("--layer-decay", type=float, default=None, help="layer-wise LR decay (uses group_matcher)")
    g.add_argument("--opt-kwargs", nargs="*", default={}, type=_kv, metavar="KEY=VALUE")
    g = p.add_argument_group("learning rate schedule")
    g.add_argument("--sched", default="cosine", help="cosine, tanh, step, multistep, plateau, poly, none")
    g.add_argument("--sched-on-updates", action="store_true", help="step the schedule every update, not epoch")
    g.add_argument("--lr", type=float, default=None, help="learning rate (default: --lr-base scaled by batch)")
    g.add_argument("--lr-base", type=float, default=0.1, help="LR for a global batch of --lr-base-size")
    g.add_argument("--lr-base-size", type=int, default=256)
    g.add_argument("--lr-base-scale", default="", choices=("", "linear", "sqrt"))
    g.add_argument("--lr-noise", type=float, nargs="+", default=None)
    g.add_argument("--lr-noise-pct", type=float, default=0.67)
    g.add_argument("--lr-noise-std", type=float, default=1.0)
    g.add_argument("--lr-cycle-mul", type=float, default=1.0)
    g.add_argument("--lr-cycle-decay", type=float, default=0.5)
    g.add_argument("--lr-cycle-limit", type=int, default=1)
    g.add_argument("--lr-k-decay", type=float, default=1.0)
    g.add_argument("--warmup-lr", type=float, default=1e-5)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--epochs", type=int, default=300)
    g.add_argument("--decay-milestones", type=int, nargs="+", default=[90, 180, 270])
    g.add_argument("--decay-epochs", type=float, default=90)
    g.add_argument("--warmup-epochs", type=int, default=5)
    g.add_argument("--warmup-prefix", action="store_true")
    g.add_argument("--cooldown-epochs", type=int, default=0)
    g.add_argument("--patience-epochs", type=int, default=10)
    g.add_argument("--decay-rate", "--dr", type=float, default=0.1)
    g = p.add_argument_group("augmentation and regularisation")
    g.add_argument("--no-aug", action="store_true", help="no training augmentation")
    g.add_argument("--train-crop-mode", default=None)
    g.add_argument("--scale", type=float, nargs=2, default=[0.08, 1.0], help="random-resized-crop area range")
    g.add_argument("--ratio", type=float, nargs=2, default=[3.0 / 4.0, 4.0 / 3.0])
    g.add_argument("--hflip", type=float, default=0.5)
    g.add_argument("--vflip", type=float, default=0.0)
    g.add_argument("--color-jitter", type=float, default=0.4)
    g.add_argument("--color-jitter-prob", type=float, default=None)
    g.add_argument("--grayscale-prob", type=float, default=0.0)
    g.add_argument("--gaussian-blur-prob", type=float, default=0.0)
    g.add_argument("--aa", default=None, help="auto-augment policy: rand-m9-mstd0.5-inc1, original, v0, ...")
    g.add_argument("--reprob", type=float, default=0.0, help="random erasing probability")
    g.add_argument("--remode", default="pixel")
    g.add_argument("--recount", type=int, default=1)
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha")
    g.add_argument("--cutmix-minmax", type=float, nargs=2, default=None)
    g.add_argument("--mixup-prob", type=float, default=1.0)
    g.add_argument("--mixup-switch-prob", type=float, default=0.5)
    g.add_argument("--mixup-mode", default="batch", choices=("batch", "pair", "elem"))
    g.add_argument("--mixup-off-epoch", type=int, default=0, help="turn mixup off from this epoch (0: never)")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--bce-loss", action="store_true", help="binary cross-entropy instead of softmax CE")
    g.add_argument("--bce-target-thresh", type=float, default=None)
    g.add_argument("--train-interpolation", default="random")
    g = p.add_argument_group("batch norm / EMA")
    g.add_argument("--sync-bn", action="store_true", help="synchronised BatchNorm (distributed, GPU)")
    g.add_argument("--dist-bn", default="reduce", choices=("reduce", "broadcast", ""),
                   help="how BN running stats are made equal across ranks before evaluation")
    g.add_argument("--model-ema", action="store_true", help="track an exponential moving average of the weights")
    g.add_argument("--model-ema-decay", type=float, default=0.9998)
    g.add_argument("--model-ema-warmup", action="store_true")
    g.add_argument("--model-ema-force-cpu", action="store_true")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (bit-exact reruns and resumes; may be slower on GPU)")
    g.add_argument("--output", default="", metavar="DIR", help="runs folder (default ./output/train)")
    g.add_argument("--experiment", default="", help="run folder name (default: date-model-size)")
    g.add_argument("--eval-metric", default="top1", choices=("top1", "top5", "loss"))
    g.add_argument("--checkpoint-hist", type=int, default=10, help="best epoch checkpoints to keep")
    g.add_argument("--recovery-interval", type=int, default=0,
                   help="write a recovery checkpoint every N optimizer updates (0: only at epoch ends)")
    g.add_argument("--skip-nonfinite-loss", action="store_true",
                   help="skip optimizer updates whose loss is NaN/inf instead of stopping the run")
    g.add_argument("--max-skipped", type=float, default=0.5, metavar="FRAC",
                   help="stop the run when more than this fraction of an epoch's training samples is unreadable "
                        "or fails its transform (skipped samples are counted and warned about; default 0.5)")
    return p


def validate_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="validate.py", description="Evaluate models: top-1/top-5, loss, throughput, params, GFLOPs.")
    _common(p, several_models=True)
    p.add_argument("--split", default="validation")
    p.add_argument("--checkpoint", nargs="*", default=[], metavar="PATH",
                   help="checkpoint file(s), or directories of *.pth.tar / *.pth / *.safetensors")
    p.add_argument("--use-ema", action="store_true", help="evaluate the EMA weights of training checkpoints")
    p.add_argument("-b", "--batch-size", type=int, default=256)
    p.add_argument("--num-samples", type=int, default=None, help="evaluate this many samples (synthetic: generate)")
    p.add_argument("--synthetic", action="store_true", help="random inputs: throughput only (same as --dataset "
                                                           "synthetic)")
    p.add_argument("--use-train-size", action="store_true", help="evaluate at the train input size")
    p.add_argument("--no-flops", action="store_true", help="skip the GFLOPs count")
    p.add_argument("--results-file", default="", metavar="FILE", help="write results (CSV or JSON)")
    p.add_argument("--results-format", default="", choices=("", "csv", "json"),
                   help="results file format (default: from the extension, else csv)")
    p.add_argument("--seed", type=int, default=0)
    return p


def parse_args(parser: argparse.ArgumentParser, argv=None, use_config: bool = True) -> argparse.Namespace:
    """Parse, with ``-c FILE`` (YAML) supplying defaults (unless ``use_config`` is False)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = _Parser(add_help=False, prog=parser.prog)
    pre.add_argument("-c", "--config", default="")
    known, _ = pre.parse_known_args(argv)
    if known.config and use_config:
        import yaml
        try:
            with open(known.config) as f:
                cfg = yaml.safe_load(f) or {}
        except OSError as e:
            parser.error(f"cannot read --config {known.config!r}: {e.strerror}")
        if not isinstance(cfg, dict):
            parser.error(f"--config {known.config!r} must be a YAML mapping of flag names to values")
        dests = {a.dest for a in parser._actions}
        unknown = sorted(k for k in cfg if k not in dests)
        if unknown:
            parser.error(f"--config {known.config!r} has unknown keys: {', '.join(unknown)}")
        parser.set_defaults(**cfg)
    args = parser.parse_args(argv)
    try:
        args.model_kwargs = parse_kwargs(args.model_kwargs)
        if hasattr(args, "opt_kwargs"):
            args.opt_kwargs = parse_kwargs(args.opt_kwargs)
    except UsageError as e:
        parser.error(str(e))
    return args


def resolve_amp_dtype(args, device: torch.device):
    if not args.amp:
        return None
    name = args.amp_dtype or ("float16" if device.type == "cuda" else "bfloat16")
    return getattr(torch, name)


def _check_common(args) -> None:
    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    if args.device is not None:
        try:
            dev = torch.device(args.device)
        except RuntimeError:
            raise UsageError(f"--device {args.device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {args.device} but CUDA is not available on this machine")
        dev_type = dev.type
    else:
        dev_type = "cuda" if torch.cuda.is_available() else "cpu"
    if args.amp and args.amp_dtype == "float16" and dev_type == "cpu":
        raise UsageError("--amp-dtype float16 needs a GPU; use --amp-dtype bfloat16 on CPU")
    if args.img_size is not None and args.img_size <= 0:
        raise UsageError(f"--img-size must be positive, got {args.img_size}")
    if args.input_size is not None and min(args.input_size) <= 0:
        raise UsageError(f"--input-size must be positive, got {args.input_size}")
    if args.num_classes is not None and args.num_classes <= 0:
        raise UsageError(f"--num-classes must be positive, got {args.num_classes}")
    if args.crop_pct is not None and not 0 < args.crop_pct <= 1:
        raise UsageError(f"--crop-pct must be in (0, 1], got {args.crop_pct}")
    if args.log_interval <= 0:
        raise UsageError(f"--log-interval must be positive, got {args.log_interval}")


def check_model_name(name: str) -> None:
    """Known visionzoo name, timm name, or an existing local-dir: export (raises the factory's message)."""
    import timm

    from .. import UnknownModelError
    from .._factory import _split
    if name.startswith("local-dir:"):
        path = name[len("local-dir:"):]
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise UsageError(f"--model {name}: no config.json in {path!r} (export with visionzoo.hub.save_pretrained)")
        return
    if name.startswith(("hf-hub:", "hf_hub:")):
        return
    try:
        _split(name)
    except UnknownModelError as e:
        if not timm.is_model(name):
            raise UsageError(str(e)) from None


def check_train_args(args) -> None:
    """Every check that needs no model or data; raises :class:`UsageError` (one line)."""
    _check_common(args)
    if not args.model:
        raise UsageError("--model is required (e.g. --model eca_resnet18; see visionzoo.list_models())")
    check_model_name(args.model)
    for flag, value in (("--batch-size", args.batch_size), ("--epochs", args.epochs),
                        ("--grad-accum-steps", args.grad_accum_steps), ("--checkpoint-hist", args.checkpoint_hist)):
        if value <= 0:
            raise UsageError(f"{flag} must be positive, got {value}")
    if args.validation_batch_size is not None and args.validation_batch_size <= 0:
        raise UsageError(f"--validation-batch-size must be positive, got {args.validation_batch_size}")
    if args.recovery_interval < 0:
        raise UsageError(f"--recovery-interval must be >= 0, got {args.recovery_interval}")
    if not 0 <= args.max_skipped < 1:
        raise UsageError(f"--max-skipped must be in [0, 1), got {args.max_skipped}")
    if args.lr is not None and args.lr <= 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if args.warmup_epochs < 0 or args.cooldown_epochs < 0:
        raise UsageError("--warmup-epochs and --cooldown-epochs must be >= 0")
    if not 0 <= args.smoothing < 1:
        raise UsageError(f"--smoothing must be in [0, 1), got {args.smoothing}")
    if not 0 < args.model_ema_decay < 1:
        raise UsageError(f"--model-ema-decay must be in (0, 1), got {args.model_ema_decay}")
    if args.pretrained and args.initial_checkpoint:
        raise UsageError("--pretrained and --initial-checkpoint both set the starting weights: pass one")
    if args.resume and args.initial_checkpoint:
        raise UsageError("--resume restores the weights itself: drop --initial-checkpoint")
    if args.initial_checkpoint and not os.path.isfile(args.initial_checkpoint):
        raise UsageError(f"--initial-checkpoint {args.initial_checkpoint!r} does not exist")
    if args.resume and not os.path.exists(args.resume):
        raise UsageError(f"--resume {args.resume!r} does not exist")
    if args.no_resume_opt and not args.resume:
        raise UsageError("--no-resume-opt only applies with --resume")
    mixing = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    if mixing and args.batch_size % 2:
        raise UsageError(f"--mixup/--cutmix mix pairs of samples: --batch-size must be even, got {args.batch_size}")
    if args.mixup < 0 or args.cutmix < 0:
        raise UsageError("--mixup and --cutmix alphas must be >= 0")
    if args.sync_bn:
        dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if not dev.startswith("cuda"):
            raise UsageError("--sync-bn needs GPUs (torch's SyncBatchNorm has no CPU implementation)")
    if args.layer_decay is not None and not 0 < args.layer_decay <= 1:
        raise UsageError(f"--layer-decay must be in (0, 1], got {args.layer_decay}")
    if args.model_ema_force_cpu and not args.model_ema:
        raise UsageError("--model-ema-force-cpu only applies with --model-ema")
    if args.torchcompile and args.deterministic:
        raise UsageError("--torchcompile and --deterministic cannot be combined (inductor kernels are not "
                         "guaranteed deterministic)")


def check_validate_args(args) -> None:
    _check_common(args)
    if args.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    if args.num_samples is not None and args.num_samples <= 0:
        raise UsageError(f"--num-samples must be positive, got {args.num_samples}")
    if not args.model and not args.checkpoint:
        raise UsageError("pass --model NAME [NAME ...] (names, globs, local-dir:/hf-hub: sources) and/or "
                         "--checkpoint PATH [PATH ...]")
    for path in args.checkpoint:
        if not os.path.exists(path):
            raise UsageError(f"--checkpoint {path!r} does not exist")
    if args.pretrained and args.checkpoint:
        raise UsageError("--pretrained and --checkpoint both choose the weights: pass one")
    if args.results_file and not os.path.isdir(os.path.dirname(os.path.abspath(args.results_file))):
        raise UsageError(f"--results-file {args.results_file!r}: its folder does not exist")


def args_to_yaml(args) -> str:
    """``args.yaml`` text (YAML of every flag, defaults included; readable back with ``-c``)."""
    import yaml

    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return yaml.safe_dump({k: plain(v) for k, v in vars(args).items()}, sort_keys=False)
