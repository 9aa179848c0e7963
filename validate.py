#!/usr/bin/env python3
"""Evaluate models: top-1 / top-5, loss, images/s, params, GFLOPs, in timm's result fields.

    python validate.py --data-dir /data/imagenet --model eca_resnet50 --checkpoint eca_resnet50.pth.tar
    python validate.py --dataset digits --checkpoint output/train/RUN/model_best.pth.tar
    python validate.py --model "eca_*" --synthetic --num-samples 256 --results-file bench.csv
    python validate.py --data-dir /data/imagenet --model local-dir:exports/my_model

``python validate.py --help`` lists every flag; the loop lives in ``visionzoo.engine``.
"""
import sys

from visionzoo.engine import validate_main

if __name__ == "__main__":
    sys.exit(validate_main())
