"""train.py / validate.py end to end, as subprocesses, on tiny ImageFolder trees.

Every run is a real process (``sys.executable``, explicit cwd and env, one torch thread so the two
xdist workers do not oversubscribe the cores); the model is a 4-stage ECA-ResNet 8-16-32-64 wide
at 16 px, so each run takes seconds.
"""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "eca_resnet18", "--model-kwargs", "depths=(1,1,1,1)", "widths=(8,16,32,64)", "stem_width=8",
        "--img-size", "16", "-j", "0", "--opt", "adamw", "--lr", "5e-3", "--warmup-epochs", "0",
        "--hflip", "0", "--color-jitter", "0", "--scale", "0.7", "1", "--log-interval", "4"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def run(script: str, *args, timeout: int = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                             f"--- stderr\n{proc.stderr[-4000:]}")
    return proc


def result_json(stdout: str):
    return json.loads(stdout.split("--result\n", 1)[1])


def make_folder(root: Path, classes: int = 3, train: int = 16, val: int = 6, size: int = 12) -> Path:
    """An ImageFolder tree: class c is a bright bar at row band c, plus noise."""
    rng = np.random.RandomState(0)
    for split, n in (("train", train), ("validation", val)):
        for c in range(classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.randint(0, 60, (size, size, 3)).astype(np.uint8)
                band = size // classes
                img[c * band:(c + 1) * band, :, :] = 200 + rng.randint(0, 55)
                Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def read_summary(run_dir: Path) -> list[dict]:
    with open(run_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def state_dict(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """A 2-epoch run on 3 classes (shared by the validate / fine-tune tests)."""
    out = tmp_path_factory.mktemp("runs")
    run("train.py", "--data-dir", data, *TINY, "-b", "8", "--epochs", "2", "--output", out, "--experiment", "base")
    return out / "base"


# ---- train, outputs, resume -------------------------------------------------------------------------
def test_train_outputs_and_resume(data, tmp_path):
    flags = ["--data-dir", data, *TINY, "-b", "8", "--model-ema", "--model-ema-decay", "0.9", "--mixup", "0.2",
             "--cutmix", "1.0", "--aa", "rand-m5-mstd0.5", "--reprob", "0.25", "--grad-accum-steps", "2",
             "--clip-grad", "1.0", "--layer-decay", "0.8"]
    proc = run("train.py", *flags, "--epochs", "2", "--output", tmp_path, "--experiment", "r")
    run_dir = tmp_path / "r"
    for name in ("args.yaml", "summary.csv", "summary.png", "last.pth.tar", "model_best.pth.tar",
                 "checkpoint-0.pth.tar", "checkpoint-1.pth.tar"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob("recovery-*")) and not list(run_dir.glob("*.tmp*"))
    rows = read_summary(run_dir)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert list(rows[0])[:2] == ["epoch", "train_loss"]
    assert {"eval_loss", "eval_top1", "eval_top5", "lr"} <= set(rows[0])
    results = result_json(proc.stdout)
    assert results[-1]["validation"]["samples"] == 18
    ckpt = torch.load(run_dir / "last.pth.tar", map_location="cpu", weights_only=True)
    for key in ("arch", "state_dict", "state_dict_ema", "optimizer", "scheduler", "epoch", "num_updates", "rng",
                "args", "metric", "version"):
        assert key in ckpt, key
    assert ckpt["arch"] == "eca_resnet18" and ckpt["epoch"] == 1 and ckpt["num_updates"] == 2 * 3
    assert "model_ema: true" in (run_dir / "args.yaml").read_text()

    # resume the finished run for one more epoch: continues in the same folder at epoch 2
    proc = run("train.py", *flags, "--epochs", "3", "--resume", run_dir)
    assert "resumed from" in proc.stdout and "epoch 2, batch 0" in proc.stdout
    assert [r["epoch"] for r in read_summary(run_dir)] == ["0", "1", "2"]
    assert torch.load(run_dir / "last.pth.tar", map_location="cpu", weights_only=True)["num_updates"] == 9


def test_kill_and_resume_reaches_the_same_weights(tmp_path):
    data = make_folder(tmp_path / "data", classes=2, train=48, val=4, size=24)
    common = ["--data-dir", data, *TINY, "--img-size", "32", "-b", "8", "--epochs", "3", "--deterministic",
              "--recovery-interval", "2", "--drop-path", "0.1", "--mixup", "0.4", "--aa", "rand-m5-mstd0.5"]
    run("train.py", *common, "--output", tmp_path, "--experiment", "straight")

    cmd = [sys.executable, "train.py", *map(str, common), "--output", str(tmp_path), "--experiment", "killed"]
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.name.startswith("recovery-1-") for p in run_dir.glob("recovery-*.pth.tar")):
                proc.send_signal(signal.SIGKILL)  # mid-epoch 1, no chance to clean up
                break
            time.sleep(0.002)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed mid-way (exit {proc.returncode}):\n{out}"
    assert not (run_dir / "summary.csv").is_file() or len(read_summary(run_dir)) < 3

    resumed = run("train.py", *common, "--resume", run_dir)
    assert "resumed from" in resumed.stdout and "recovery-1-" in resumed.stdout
    straight, again = state_dict(tmp_path / "straight" / "last.pth.tar"), state_dict(run_dir / "last.pth.tar")
    assert straight.keys() == again.keys()
    for k in straight:
        assert torch.equal(straight[k], again[k]), k
    a, b = read_summary(tmp_path / "straight"), read_summary(run_dir)
    assert [(r["epoch"], r["train_loss"], r["eval_loss"], r["eval_top1"]) for r in a] == \
        [(r["epoch"], r["train_loss"], r["eval_loss"], r["eval_top1"]) for r in b]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes(data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "train.py", "--data-dir", str(data),
           *map(str, TINY), "-b", "4", "--epochs", "2", "--device", "cpu", "--output", str(tmp_path),
           "--experiment", "ddp"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stdout
    run_dir = tmp_path / "ddp"
    assert [r["epoch"] for r in read_summary(run_dir)] == ["0", "1"]  # rank 0 alone writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
    results = result_json(proc.stdout)
    assert results[-1]["validation"]["samples"] == 18  # both ranks' halves, reduced
    ckpt = torch.load(run_dir / "last.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert ckpt["num_updates"] == 2 * (48 // 2 // 4)


# ---- validate -------------------------------------------------------------------------------------
def test_validate_checkpoint_local_dir_and_synthetic(trained, data, tmp_path):
    csv_path, json_path = tmp_path / "r.csv", tmp_path / "r.json"
    proc = run("validate.py", "--data-dir", data, "--checkpoint", trained / "last.pth.tar", "-j", "0",
               "--results-file", csv_path)
    res = result_json(proc.stdout)
    for key in ("model", "top1", "top1_err", "top5", "top5_err", "loss", "param_count", "img_size", "crop_pct",
                "interpolation", "samples_per_sec", "gmacs", "gflops", "num_samples"):
        assert key in res, key
    assert res["model"] == "eca_resnet18" and res["img_size"] == 16 and res["num_samples"] == 18
    ckpt = torch.load(trained / "last.pth.tar", map_location="cpu", weights_only=True)
    assert abs(res["top1"] - ckpt["metric"]) < 1e-3  # same number as training's own evaluation
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["top1"]) == res["top1"]

    # a local-dir: export of the same weights gives the same top-1
    from visionzoo.engine.modeling import build_model
    from visionzoo.hub import save_pretrained
    model, _ = build_model(None, checkpoint=str(trained / "last.pth.tar"))
    save_pretrained(model, str(tmp_path / "export"))
    proc = run("validate.py", "--data-dir", data, "--model", f"local-dir:{tmp_path / 'export'}", "--img-size", "16",
               "--crop-pct", str(ckpt["data_config"]["crop_pct"]), "-j", "0", "--results-file", json_path)
    exported = result_json(proc.stdout)
    assert exported["top1"] == res["top1"] and json.loads(json_path.read_text())[0]["top1"] == res["top1"]

    # synthetic throughput run over a glob, no weights needed
    proc = run("validate.py", "--model", "eca_resnet1?", "--model-kwargs", "depths=(1,1,1,1)", "widths=(8,16,32,64)",
               "stem_width=8", "--synthetic", "--num-samples", "8", "-b", "4", "--img-size", "16", "-j", "0")
    rows = result_json(proc.stdout)
    rows = rows if isinstance(rows, list) else [rows]  # one model: a single record, as timm prints it
    assert [r["model"] for r in rows] == ["eca_resnet18"] and rows[0]["top1"] is None
    assert rows[0]["samples_per_sec"] > 0 and rows[0]["num_samples"] == 8


def test_finetune_with_a_new_class_count(trained, tmp_path):
    two = make_folder(tmp_path / "two", classes=2, train=8, val=4)
    proc = run("train.py", "--data-dir", two, *TINY, "-b", "8", "--epochs", "1", "--initial-checkpoint",
               trained / "last.pth.tar", "--output", tmp_path, "--experiment", "ft")
    assert "2 classes" in proc.stdout
    sd = state_dict(tmp_path / "ft" / "last.pth.tar")
    base = state_dict(trained / "last.pth.tar")
    head = [k for k in sd if sd[k].ndim == 2][-1]
    assert sd[head].shape[0] == 2 and base[head].shape[0] == 3
    res = result_json(run("validate.py", "--data-dir", two, "--checkpoint", tmp_path / "ft" / "model_best.pth.tar",
                          "-j", "0").stdout)
    assert res["num_samples"] == 8


# ---- robustness -----------------------------------------------------------------------------------
def test_corrupt_images_are_skipped_and_counted(tmp_path):
    data = make_folder(tmp_path / "data", classes=2, train=8, val=4)
    (data / "train" / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = data / "validation" / "class_1" / "000.png"
    (data / "validation" / "class_1" / "truncated.png").write_bytes(good.read_bytes()[:60])
    proc = run("train.py", "--data-dir", data, *TINY, "-b", "4", "--epochs", "1", "--output", tmp_path,
               "--experiment", "c")
    text = proc.stdout + proc.stderr
    assert "skipping unreadable sample" in text and "broken.png" in text and "truncated.png" in text
    result = result_json(proc.stdout)[0]
    assert result["validation"]["skipped_samples"] == 1 and result["validation"]["samples"] == 8
    assert int(read_summary(tmp_path / "c")[0]["train_skipped_samples"]) <= 1


@pytest.mark.parametrize("split, message", [("train", "16 of 16 training samples were skipped"),
                                            ("validation", "none of the 8 validation samples could be read")])
def test_unreadable_data_stops_before_any_checkpoint(tmp_path, split, message):
    data = make_folder(tmp_path / "data", classes=2, train=8, val=4)
    for img in (data / split).rglob("*.png"):
        img.write_bytes(b"not an image")
    proc = run("train.py", "--data-dir", data, *TINY, "-b", "4", "--epochs", "2", "--output", tmp_path,
               "--experiment", "none", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: ") and message in last, proc.stderr
    assert not list((tmp_path / "none").glob("*.pth.tar"))


def test_non_finite_loss_stops_with_the_step(data, tmp_path):
    args = ["train.py", "--data-dir", data, *TINY, "-b", "8", "--epochs", "1", "--lr", "1e30", "--opt", "sgd",
            "--output", tmp_path]
    proc = run(*args, "--experiment", "nan", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "non-finite loss" in proc.stderr and "epoch 0, batch" in proc.stderr
    assert "--skip-nonfinite-loss" in proc.stderr
    proc = run(*args, "--experiment", "skip", "--skip-nonfinite-loss", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped optimizer update" in proc.stdout


BAD = {
    "unknown model": (["--model", "eca_resnet19"], "unknown model 'eca_resnet19'"),
    "missing data dir": (["--data-dir", "/nonexistent/imagenet"], "does not exist"),
    "batch size 0": (["-b", "0"], "--batch-size must be positive"),
    "pretrained + checkpoint": (["--pretrained", "--initial-checkpoint", "x.pth"], "pass one"),
    "fp16 on cpu": (["--amp", "--amp-dtype", "float16", "--device", "cpu"], "needs a GPU"),
    "sync-bn on cpu": (["--sync-bn", "--device", "cpu"], "--sync-bn needs GPUs"),
    "mixup odd batch": (["--mixup", "0.8", "-b", "7"], "must be even"),
    "bad model kwargs": (["--model-kwargs", "nonsense"], "key=value"),
    "model kwargs literal": (["--model-kwargs", "layers=(1,1"], "layers=(1,1: '(1,1' is not a Python literal"),
    "resume a missing run": (["--resume", "/nonexistent/run"], "--resume '/nonexistent/run' does not exist"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_fail_fast_with_one_line(case, data, tmp_path):
    extra, message = BAD[case]
    args = ["--data-dir", data, "--model", "eca_resnet18", "--epochs", "1", "--output", tmp_path / "out", *extra]
    t0 = time.monotonic()
    proc = run("train.py", *args, check=False, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error:") and message in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()  # nothing was created
    assert time.monotonic() - t0 < 60


def test_validate_checkpoint_of_another_architecture(trained, data):
    """timm's validate.py loads --checkpoint into --model: the ECA run's --model-kwargs are not carried over
    to NAT (they failed as unexpected keywords), and the mismatch is one line naming both."""
    proc = run("validate.py", "--data-dir", data, "--model", "nat_mini", "--checkpoint", trained / "last.pth.tar",
               "-j", "0", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--model 'nat_mini'" in lines[0] and "trained as 'eca_resnet18'" in lines[0], lines
    assert "are not applied" in proc.stdout + proc.stderr  # the warning about the run's --model-kwargs


def test_validate_bad_arguments(tmp_path):
    proc = run("validate.py", "--model", "not_a_model", "--synthetic", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "unknown model" in proc.stderr
    proc = run("validate.py", "--model", "eca_resnet18", "--dataset", "digits", check=False)
    assert proc.returncode == 2 and "no weights to evaluate" in proc.stderr
