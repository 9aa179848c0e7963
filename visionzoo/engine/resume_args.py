"""``train.py --resume RUN_DIR``: the resumed run's flags come from the run itself.

``--resume`` (a run directory or a checkpoint file in one) alone restores every flag from the run's
``args.yaml`` (or, when that file is gone, from the ``args`` the checkpoint records) and the run
continues in that directory, wherever it now lies: the ``--output`` / ``--experiment`` recorded in it
are where the run *was* (a copied or moved run must never write into the original).

Flags given on the command line (or through ``-c FILE``) together with ``--resume`` may change only
what does not change the run's meaning (:data:`SAFE`: the epoch count, workers, device, logging,
where the data now lives...). Any other flag must agree with the recorded value, else the run is
refused with a one-line error naming the flag: architecture flags would not fit the checkpoint, and
recipe flags (LR, optimizer, batch size, augmentation) would make the "resumed" run another run
(start one from the weights with ``--initial-checkpoint``).
"""
from __future__ import annotations

import argparse
import os

from .args import _Parser, parse_args, parse_kwargs

__all__ = ["ARCHITECTURE", "SAFE", "parse_train_args", "resume_run_dir"]

#: flags a resumed run may change
SAFE = frozenset({
    "epochs", "workers", "pin_mem", "device", "log_interval", "recovery_interval", "checkpoint_hist",
    "data_dir", "dataset_download", "max_skipped", "skip_nonfinite_loss", "torchcompile", "torchcompile_mode",
    "validation_batch_size", "no_resume_opt", "grad_checkpointing", "model_ema_force_cpu", "dist_bn",
    "deterministic", "channels_last"})
#: flags that define the network (and so the checkpoint's keys and shapes)
ARCHITECTURE = frozenset({
    "model", "model_kwargs", "num_classes", "in_chans", "input_size", "img_size", "gp", "drop", "drop_path",
    "drop_block", "pretrained", "initial_checkpoint", "head_init_scale", "head_init_bias"})
#: where the run lives: always the resumed directory
_PLACEMENT = ("output", "experiment")
_IGNORED = ("resume", "config")


def resume_run_dir(resume: str) -> str:
    """The run directory of ``--resume`` (the directory itself, or the folder of a checkpoint file)."""
    path = os.path.abspath(resume)
    return path if os.path.isdir(path) else os.path.dirname(path)


def _load_yaml(path: str, what: str, parser) -> dict:
    import yaml
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        parser.error(f"{what} {path!r} cannot be read: {str(e).splitlines()[0]}")
    if not isinstance(data, dict):
        parser.error(f"{what} {path!r} must be a YAML mapping of flag names to values")
    return data


def _recorded(resume: str, parser) -> dict:
    """The flags the run was started with: ``RUN_DIR/args.yaml``, else the checkpoint's ``args``."""
    run_dir = resume_run_dir(resume)
    yaml_path = os.path.join(run_dir, "args.yaml")
    if os.path.isfile(yaml_path):
        return _load_yaml(yaml_path, "--resume: the run's args.yaml", parser)
    from ..convert import CheckpointError
    from .checkpoint import find_resume, load_checkpoint
    try:
        ckpt = load_checkpoint(find_resume(resume))
    except (CheckpointError, FileNotFoundError) as e:
        parser.error(f"--resume {resume!r}: no args.yaml in {run_dir!r} and no readable checkpoint ({e})")
    if not isinstance(ckpt.get("args"), dict):
        parser.error(f"--resume {resume!r}: no args.yaml in {run_dir!r} and the checkpoint records no flags; "
                     "pass the run's flags with -c FILE")
    return dict(ckpt["args"])


def _explicit(parser, argv: list[str]) -> dict:
    """Only the flags the command line names (every default suppressed)."""
    saved = {a.dest: a.default for a in parser._actions}
    try:
        for a in parser._actions:
            a.default = argparse.SUPPRESS
        return vars(parser.parse_args(argv))
    finally:
        for a in parser._actions:
            a.default = saved[a.dest]


def _norm(key: str, value):
    if key in ("model_kwargs", "opt_kwargs"):
        value = parse_kwargs(value or {})
    if isinstance(value, dict):
        return {k: _norm("", v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_norm("", v) for v in value]
    return value


def _conflict(key: str, given, recorded, origin: str, run_dir: str) -> str:
    flag = "--" + key.replace("_", "-")
    kind = "architecture" if key in ARCHITECTURE else "training-recipe"
    return (f"--resume {run_dir}: {flag} {given!r}{origin} conflicts with the run's {kind} flag {flag} "
            f"{recorded!r} (its args.yaml); a resumed run keeps its flags, only --epochs, --workers, --device, "
            f"--data-dir and such may change: drop {flag}, or start a new run from the weights with "
            "--initial-checkpoint")


def parse_train_args(parser: _Parser, argv=None) -> argparse.Namespace:
    """``parse_args`` for train.py; with ``--resume``, the run's recorded flags (see the module doc)."""
    import sys
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = _Parser(add_help=False, prog=parser.prog)
    pre.add_argument("-c", "--config", default="")
    pre.add_argument("--resume", default="")
    known, _ = pre.parse_known_args(argv)
    if not known.resume:
        return parse_args(parser, argv)
    if not os.path.exists(known.resume):
        parser.error(f"--resume {known.resume!r} does not exist (a run directory or a checkpoint file in one)")
    run_dir = resume_run_dir(known.resume)
    dests = {a.dest: a.default for a in parser._actions if a.dest != "help"}
    recorded = {k: v for k, v in _recorded(known.resume, parser).items() if k in dests}
    # the starting weights of the original run are in the checkpoint now
    recorded.update(initial_checkpoint="", pretrained=False, config="")
    given = {}
    if known.config:
        cfg = _load_yaml(known.config, "--config", parser)
        unknown = sorted(k for k in cfg if k not in dests)
        if unknown:
            parser.error(f"--config {known.config!r} has unknown keys: {', '.join(unknown)}")
        given.update({k: (v, f" (from --config {known.config})") for k, v in cfg.items()
                      if k not in _PLACEMENT and k not in _IGNORED and k not in ("initial_checkpoint", "pretrained")})
    explicit = _explicit(parser, argv)
    for key in _PLACEMENT:
        if key in explicit:
            parser.error(f"--resume continues the run in its own directory {run_dir}: drop --{key} "
                         "(copy the run folder first to continue it elsewhere)")
    given.update({k: (v, "") for k, v in explicit.items() if k not in _IGNORED})
    for key, (value, origin) in given.items():
        if key in SAFE:
            continue
        before = recorded.get(key, dests[key])
        if _norm(key, value) != _norm(key, before):
            parser.error(_conflict(key, value, before, origin, run_dir))
    parser.set_defaults(**recorded)
    args = parse_args(parser, argv, use_config=False)  # -c agreed with the record (checked above)
    args.resume = known.resume
    args.output, args.experiment = os.path.dirname(run_dir), os.path.basename(run_dir)
    return args
