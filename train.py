#!/usr/bin/env python3
"""Train a visionzoo (or timm) image classifier: timm's train.py flags and output files.

    python train.py --data-dir /data/imagenet --model eca_resnet50 --amp --opt adamw --lr 1e-3
    torchrun --nproc_per_node 8 train.py --data-dir /data/imagenet --model eca_resnet50 ...
    python train.py --dataset digits --model eca_resnet18 --img-size 32 --epochs 30   # no download
    python train.py --resume output/train/RUN        # continue a killed run from its newest checkpoint

``python train.py --help`` lists every flag; the loop lives in ``visionzoo.engine``.
"""
import sys

from visionzoo.engine import train_main

if __name__ == "__main__":
    sys.exit(train_main())
