"""visionzoo: a timm-style zoo of vision backbones built from efficient attention blocks.

    import visionzoo
    model = visionzoo.create_model("eca_resnet50", num_classes=10)
    visionzoo.list_models("cbam_*")
    backbone = visionzoo.create_model("cbam_resnet50", features_only=True, out_indices=(1, 2, 3))
    model = visionzoo.create_model("eca_resnet50", checkpoint_path="eca_resnet50_k3557.pth.tar")

Importing visionzoo registers every model in timm's registry as ``vz_<name>``.
"""
from . import convert, models  # noqa: F401  (models registers the families)
from ._factory import (UnknownModelError, count_params, create_model, list_families, list_models,
                       list_official_families, model_info)
from .convert import from_official
from .ops import BackendUnavailable, use_backend

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable", "UnknownModelError", "count_params", "create_model", "from_official", "list_families",
    "list_models", "list_official_families", "model_info", "use_backend", "__version__",
]
