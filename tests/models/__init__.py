import visionzoo
from visionzoo.models._registry import tiny_overrides


def create_tiny(name: str, **kwargs):
    """Registered model ``name`` in its family's reduced form (``register_family(..., tiny=...)``)."""
    return visionzoo.create_model(name, **tiny_overrides(name), **kwargs)
