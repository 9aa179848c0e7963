"""Model families. Importing this package registers every family (cheap: no Triton, no CUDA)."""
from . import biformer, ca_resnet, dinat_s, eca_mobilenetv2, halonet, maxvit, nat, nat_isotropic, single_head_vit  # noqa: F401
