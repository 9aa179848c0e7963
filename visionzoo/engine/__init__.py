"""Training and evaluation machinery behind ``train.py`` and ``validate.py``.

* :mod:`.args`        flags (timm's names), YAML config, fail-fast checks
* :mod:`.data`        ImageFolder / torchvision / embedded digits / synthetic sources, skip-and-count
                      loading, per-sample seeded augmentation, resumable sharded sampler
* :mod:`.modeling`    build the named model (visionzoo, timm, local-dir:/hf-hub:) with its weights
* :mod:`.train_loop`  the training run (AMP, EMA, mixup, accumulation, clipping, DDP, resume)
* :mod:`.resume_args` `--resume RUN_DIR`: the run's recorded flags, safe overrides, its own folder
* :mod:`.evaluate`    the evaluation loop and ``validate.py``
* :mod:`.checkpoint`  atomic checkpoints with the full training state, timm's file layout
* :mod:`.distributed` torchrun process group, DDP wrapping, reductions
* :mod:`.plot`, :mod:`.progress`  training-curves PNG; progress bar / log lines
"""
from .errors import NonFiniteLossError, TrainingInterrupted, UsageError

__all__ = ["NonFiniteLossError", "TrainingInterrupted", "UsageError", "train_main", "validate_main"]


def train_main(argv=None) -> int:
    from .train_loop import train_main as main
    return main(argv)


def validate_main(argv=None) -> int:
    from .evaluate import validate_main as main
    return main(argv)
