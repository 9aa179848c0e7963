"""Detection and segmentation adapters: one module per framework, imported only on demand.

- :mod:`visionzoo.dense.torchvision`: ``backbone_with_fpn`` for torchvision's FasterRCNN / MaskRCNN / RetinaNet.

Each module imports its framework at import time; ``import visionzoo`` never imports any of them.
"""
