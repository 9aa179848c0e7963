"""Agent-DeiT on CPU against its timm anchor: ``agent_deit_small`` vs timm ``deit_small_patch16_224``.

    .venv/bin/python benchmarks/bench_agent_deit.py [--rounds 5] [--batch 8] [--warmup 1] [--threads 1]

Times forward img/s (eval, inference mode, random weights: only the speed is compared) of ``agent_deit_small``
against timm's ``deit_small_patch16_224`` at 224 (target >= 1.0x) and against the same DeiT built with
``img_size=448`` at 448 (target >= 1.5x). ``agent_deit_small`` is the 224 model at both sizes: its position
embedding is resampled per call and its agent biases interpolated once per map size and cached (the
``agent_deit_small_448`` model has the same compute). Both models and the GEMM yardstick are timed round-robin in
the same rounds (``speedup``: ratio of the medians over the quiet rounds, or over all rounds when fewer than 3
were quiet; ``speedup_of_min``: ratio of the fastest rounds, the steadier figure on a busy host); results go to
``benchmarks/results/agent_deit.json`` (``agent_deit_threads1.json`` with
``--threads 1``).

The 448 target is at the arithmetic ceiling: timm's DeiT-S at 448 costs ~22.6 GMACs (16.9 in its linear layers,
5.7 in softmax attention over 785 tokens), Agent-DeiT-S 17.6 (the same linear layers, agent attention and the
depthwise conv ~0.7). Were agent attention free, the ratio would be the FLOP ratio of ~1.34x times what oneDNN's
GEMMs gain over ATen's on the shared linear layers (~1.1x), i.e. ~1.5x.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_agent import forward_vs_anchors  # noqa: E402
from harness import machine_info, markdown_table, write_json  # noqa: E402

#: (ours, timm anchor, timm kwargs, input size, target speed-up)
FORWARD = [
    ("agent_deit_small", "deit_small_patch16_224", {}, 224, 1.0),
    ("agent_deit_small", "deit_small_patch16_224", dict(img_size=448), 448, 1.5),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per variant")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = forward_vs_anchors(FORWARD, args)
    print("forward (eval, inference mode) vs the timm anchor\n")
    print(markdown_table(rows, list(rows[0])))
    name = f"agent_deit_threads{args.threads}" if args.threads else "agent_deit"
    write_json(name, dict(machine=machine_info(), args=vars(args), forward=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
