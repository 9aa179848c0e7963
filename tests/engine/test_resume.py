"""``train.py --resume``: the run's own flags, its own folder, nothing written anywhere else.

A copied run and a moved run are resumed (through ``-c args.yaml --resume``, the bare README form and a
checkpoint file); each time every file outside the resumed folder keeps its hash. Subprocess runs of
the tiny ECA-ResNet of tests/test_scripts.py on a 2-class 16-px folder (a few seconds each).
"""
import hashlib
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.test_scripts import REPO, TINY, make_folder, read_summary, run
from visionzoo.engine.args import train_parser
from visionzoo.engine.checkpoint import CheckpointSaver, remove_stale_temporaries
from visionzoo.engine.resume_args import parse_train_args


def _hashes(skip: Path, *roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` except those under ``skip``."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and skip not in p.parents:
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _repo_output() -> set[str]:
    out = REPO / "output"
    return {str(p) for p in out.rglob("*")} if out.exists() else set()


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A finished 1-epoch run; tests copy it (it stays untouched)."""
    root = tmp_path_factory.mktemp("resume")
    data = make_folder(root / "data", classes=2, train=8, val=3)
    run("train.py", "--data-dir", data, *TINY, "-b", "8", "--epochs", "1", "--output", root / "runs",
        "--experiment", "r1")
    return root / "runs" / "r1"


def _resume_in_place(roots: tuple, target: Path, *args, epochs_after: int):
    before, repo_before = _hashes(target, *roots), _repo_output()
    proc = run("train.py", *args)
    assert "resumed from" in proc.stdout and str(target) in proc.stdout
    assert _hashes(target, *roots) == before, "a file outside the resumed run changed"
    assert _repo_output() == repo_before, "the resumed run wrote under ./output"
    assert [int(r["epoch"]) for r in read_summary(target)] == list(range(epochs_after))
    assert torch.load(target / "last.pth.tar", map_location="cpu", weights_only=True)["epoch"] == epochs_after - 1
    return proc


def test_copied_and_moved_runs_resume_into_themselves(base_run, tmp_path):
    root = tmp_path / "work"
    shutil.copytree(base_run.parent, root / "runs")  # runs/r1 as recorded in its args.yaml ...
    shutil.copytree(root / "runs" / "r1", root / "copies" / "r1b")  # ... a copy elsewhere ...
    (root / "runs" / "r1").rename(root / "moved")  # ... and the original moved away (no runs/r1 any more)
    (root / "runs" / "r1").mkdir()  # a new run now owns the recorded path: it must stay empty
    copy, moved = root / "copies" / "r1b", root / "moved"
    roots = (root, base_run.parent.parent)  # the copies' args.yaml record base_run's folder as their output

    # the form train.py's own messages recommend: -c RUN/args.yaml --resume RUN
    _resume_in_place(roots, copy, "-c", copy / "args.yaml", "--resume", copy, "--epochs", "2", epochs_after=2)
    # the README form (no other flag) on the moved run, which also has a leftover temporary file
    (moved / "last.pth.tar.tmp-4242").write_bytes(b"half a checkpoint")
    _resume_in_place(roots, moved, "--resume", moved, "--epochs", "2", "-j", "0", epochs_after=2)
    assert not list(moved.glob("*.tmp-*"))
    # a checkpoint file names its run folder too
    _resume_in_place(roots, moved, "--resume", moved / "last.pth.tar", "--epochs", "3", epochs_after=3)
    assert not any((root / "runs" / "r1").iterdir())
    args_yaml = (moved / "args.yaml").read_text()  # rewritten with where the run is now
    assert f"output: {moved.parent}" in args_yaml and "experiment: moved" in args_yaml


def test_readme_resume_command_as_written(base_run, tmp_path):
    line = next(ln for ln in (REPO / "README.md").read_text().splitlines() if "train.py --resume" in ln)
    command = line.split("#")[0].split()
    assert command[:2] == ["python", "train.py"]
    run_dir = tmp_path / "RUN_DIR"
    shutil.copytree(base_run, run_dir)
    args = [str(run_dir) if "RUN_DIR" in a else a for a in command[2:]]
    assert args == ["--resume", str(run_dir)]
    before = _hashes(run_dir, tmp_path, base_run.parent.parent)
    proc = run("train.py", *args)
    assert "resumed from" in proc.stdout and _hashes(run_dir, tmp_path, base_run.parent.parent) == before
    # a missing run folder is named, not "--model is required"
    proc = run("train.py", "--resume", tmp_path / "missing", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--resume" in proc.stderr
    assert "does not exist" in proc.stderr


CONFLICTS = {
    "architecture": (["--model", "eca_resnet34"], r"--model 'eca_resnet34' conflicts with the run's architecture"),
    "model kwargs": (["--model-kwargs", "depths=(2,1,1,1)"], r"--model-kwargs .* architecture flag"),
    "recipe": (["--lr", "0.5"], r"--lr 0.5 conflicts with the run's training-recipe flag --lr 0.005"),
    "output": (["--output", "elsewhere"], r"drop --output"),
    "experiment": (["--experiment", "other"], r"drop --experiment"),
    "initial checkpoint": (["--initial-checkpoint", "x.pth"], r"--initial-checkpoint"),
}


@pytest.mark.parametrize("case", list(CONFLICTS))
def test_conflicting_flags_are_refused(case, base_run, capsys):
    """In-process (the parse is where the refusal happens; train.py runs it first, before any file is made)."""
    before = _hashes(base_run / "none", base_run.parent.parent)
    extra, pattern = CONFLICTS[case]
    with pytest.raises(SystemExit) as exc:
        parse_train_args(train_parser(), ["--resume", str(base_run), *extra])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and re.search(pattern, lines[0]), lines
    assert _hashes(base_run / "none", base_run.parent.parent) == before


def test_safe_flags_override_the_record(base_run):
    args = parse_train_args(train_parser(), ["--resume", str(base_run), "--epochs", "5", "-j", "2"])
    assert args.epochs == 5 and args.workers == 2 and args.lr == 5e-3 and args.model == "eca_resnet18"
    assert args.model_kwargs == {"depths": (1, 1, 1, 1), "widths": (8, 16, 32, 64), "stem_width": 8}
    assert (args.output, args.experiment) == (str(base_run.parent), base_run.name)


# ---- units --------------------------------------------------------------------------------------
@pytest.mark.parametrize("decreasing", [False, True])
def test_nan_metric_never_becomes_model_best(tmp_path, decreasing):
    saver = CheckpointSaver(str(tmp_path), decreasing=decreasing, max_history=3)
    assert not saver.save_epoch({"epoch": 0}, 0, math.nan)  # a NaN first epoch is not "best" either
    assert not (tmp_path / "model_best.pth.tar").exists() and (tmp_path / "last.pth.tar").exists()
    assert saver.save_epoch({"epoch": 1}, 1, 50.0)
    assert not saver.save_epoch({"epoch": 2}, 2, math.nan) and not saver.save_epoch({"epoch": 3}, 3, math.inf)
    assert saver.best == [50.0, 1] and [h[1] for h in saver.history] == [1]
    assert torch.load(tmp_path / "model_best.pth.tar", weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1.pth.tar"]


def test_remove_stale_temporaries(tmp_path):
    for name in ("last.pth.tar.tmp-12", "summary.csv.tmp-7", "model_best.pth.tar.tmp-3", "keep.tmp-x", "last.pth.tar"):
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temporaries(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == [
        "last.pth.tar.tmp-12", "model_best.pth.tar.tmp-3", "summary.csv.tmp-7"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tmp-x", "last.pth.tar"]
