"""Model families. Importing this package registers every family (cheap: no Triton, no CUDA)."""
from . import ca_resnet, eca_mobilenetv2  # noqa: F401
