"""Agent-Swin / Agent-PVT on CPU against their timm anchors, and the Agent-PVT training step.

    .venv/bin/python benchmarks/bench_agent.py [--rounds 5] [--batch 8] [--train-batch 8] [--warmup 1] [--threads 1]

Times (1) forward img/s (eval, inference mode, random weights: only the speed is compared) of
``agent_swin_tiny`` against timm's ``swin_tiny_patch4_window7_224`` at 224 and against the same Swin built with
``img_size=448`` at 448 (``agent_swin_tiny`` is the 224 model at both sizes: its agent biases are interpolated
once per map size and cached), targets >= 1.0x and >= 1.3x Swin's img/s; ``agent_pvt_small`` against timm's
``pvt_v2_b2`` at 224, target >= 1.0x; and (2) one training step (forward, backward, SGD with momentum; 224) of
``agent_pvt_tiny`` with the op backends as shipped (automatic: ``cpu`` here) against the same model on the
``reference`` backend (the official formulation written plainly), target: no slower. Each table's variants
and the GEMM yardstick are timed round-robin in the same rounds; results go to
``benchmarks/results/agent.json`` (``agent_threads1.json`` with ``--threads 1``).

On a host whose cores are shared with other jobs, ``--threads 1`` gives the steadier ratio: with two torch
threads every parallel op waits for both, so a preempted worker adds a scheduler slice to each of the many
small ops of an attention block (measured at load ~8 on 2 vCPUs: ~15 ms for any op of an AgentAttn call,
whatever its size).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import machine_info, markdown_table, model_call, time_variants, write_json  # noqa: E402

import visionzoo  # noqa: E402

#: (ours, timm anchor, timm kwargs, input size, target speed-up)
FORWARD = [
    ("agent_swin_tiny", "swin_tiny_patch4_window7_224", {}, 224, 1.0),
    ("agent_swin_tiny", "swin_tiny_patch4_window7_224", dict(img_size=448), 448, 1.3),
    ("agent_pvt_small", "pvt_v2_b2", {}, 224, 1.0),
]


def _quiet(t: dict) -> str:
    return min(f"{v.quiet_rounds}/{v.rounds}" for v in t.values())


def forward_vs_anchors(forward: list[tuple], args) -> list[dict]:
    """One table row per ``(ours, timm anchor, timm kwargs, input size, target)``: forward img/s of both, timed
    round-robin in the same rounds (``speedup``: ratio of the medians; ``speedup_of_min``: of the fastest rounds,
    the steadier figure on a busy host)."""
    import timm

    rows = []
    for ours, anchor, anchor_kwargs, size, target in forward:
        torch.manual_seed(0)
        calls = {ours: model_call(lambda n=ours: visionzoo.create_model(n), args.batch, size),
                 anchor: model_call(lambda: timm.create_model(anchor, **anchor_kwargs), args.batch, size)}
        t = time_variants(calls, rounds=args.rounds, warmup=args.warmup)
        ips = {k: args.batch / v.median_ms * 1e3 for k, v in t.items() if k != "gemm"}
        speedup = ips[ours] / ips[anchor]
        rows.append(dict(model=ours, anchor=anchor, img=size, B=args.batch, img_s=ips[ours], anchor_img_s=ips[anchor],
                         speedup=speedup, speedup_of_min=t[anchor].min_ms / t[ours].min_ms, target=target,
                         met="yes" if speedup >= target else "NO", gemm_gflops=harness.gemm_gflops(t),
                         quiet=_quiet(t)))
        print(markdown_table(rows[-1:], list(rows[-1])).splitlines()[-1], file=sys.stderr)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per variant")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    fwd_rows = forward_vs_anchors(FORWARD, args)

    train_rows = []
    name = "agent_pvt_tiny"
    torch.manual_seed(0)
    fast = model_call(lambda: visionzoo.create_model(name), args.train_batch, 224, train=True)
    torch.manual_seed(0)
    plain = model_call(lambda: visionzoo.create_model(name, backend="reference"), args.train_batch, 224, train=True)
    t = time_variants({"fast": fast, "plain": plain}, rounds=args.rounds, warmup=args.warmup)
    speedup = t["plain"].median_ms / t["fast"].median_ms
    train_rows.append(dict(model=name, img=224, B=args.train_batch, fast_ms=t["fast"].median_ms,
                           plain_ms=t["plain"].median_ms, fast_img_s=args.train_batch / t["fast"].median_ms * 1e3,
                           speedup=speedup, met="yes" if speedup >= 1.0 else "NO",
                           gemm_gflops=harness.gemm_gflops(t), quiet=_quiet(t)))

    print("forward (eval, inference mode) vs the timm anchors\n")
    print(markdown_table(fwd_rows, list(fwd_rows[0])))
    print("\ntraining step (fwd + bwd + SGD): op backends as shipped vs the reference backend\n")
    print(markdown_table(train_rows, list(train_rows[0])))
    name = f"agent_threads{args.threads}" if args.threads else "agent"
    write_json(name, dict(machine=machine_info(), args=vars(args), forward=fwd_rows, train=train_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
