"""Model families. Importing this package registers every family (cheap: no Triton, no CUDA).

Every public module of the package is a family and is imported here, so adding a family is adding
its file; private modules (``_base``, ``_registry``, ``_hierarchical``) are the shared machinery.
"""
import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
