"""Detection and segmentation adapters: one module per framework, imported only on demand.

- :mod:`visionzoo.dense.torchvision`: ``backbone_with_fpn`` for torchvision's FasterRCNN / MaskRCNN / RetinaNet.
- :mod:`visionzoo.dense.detectron2`: ``VisionzooBackbone`` and ``BACKBONE_REGISTRY`` builders (yacs and LazyConfig).
- :mod:`visionzoo.dense.mm`: ``VisionzooBackbone`` in mmdet's / mmseg's ``MODELS`` (``custom_imports``).
- transformers (``TimmBackbone``) and segmentation_models_pytorch (``tu-vz_*``) need no adapter: they build
  ``vz_*`` models through timm once ``visionzoo`` is imported.

Each module imports its framework at import time; ``import visionzoo`` never imports any of them.
"""
