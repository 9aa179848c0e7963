"""pytest conftest that points timm's own ``tests/test_models.py`` at visionzoo models.

Copied next to the unpacked timm ``tests/`` folder by ``tools/timm_test_models.py`` (not imported by
the project's own tests). Before ``test_models.py`` is imported it imports visionzoo (which registers
the ``vz_*`` models) and narrows ``timm.list_models`` / ``timm.list_pretrained`` to the names in
``VZ_TIMM_MODELS``: every model-parametrized test then runs exactly timm's checks, with timm's own
filters (``EXCLUDE_*``, size limits), on those models. Tests parametrized with fixed timm model names
(or none) are deselected, and so are the pretrained-download tests unless ``VZ_TIMM_PRETRAINED=1``.
Each result (test, model, outcome, first line of the error) is written to ``VZ_TIMM_RESULTS`` (JSON).
"""
import json
import os

import pytest
import timm

import visionzoo  # noqa: F401  (registers the vz_* models before test_models.py lists them)

MODELS = frozenset(os.environ["VZ_TIMM_MODELS"].split(","))
#: tests that download hub weights (no vz model has weights on the HF hub under its timm name)
PRETRAINED_TESTS = ("test_model_load_pretrained", "test_model_features_pretrained", "test_model_inference")


def _narrow(fn):
    def narrowed(*args, **kwargs):
        return [n for n in fn(*args, **kwargs) if n.split(".")[0] in MODELS]
    return narrowed


timm.list_models = _narrow(timm.list_models)
timm.list_pretrained = _narrow(timm.list_pretrained)
_results: list[dict] = []


def _model_of(item) -> str | None:
    name = getattr(getattr(item, "callspec", None), "params", {}).get("model_name")
    return name if isinstance(name, str) and name.split(".")[0] in MODELS else None


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        pretrained_ok = os.environ.get("VZ_TIMM_PRETRAINED") == "1" or item.originalname not in PRETRAINED_TESTS
        (keep if _model_of(item) and pretrained_ok else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


def _reason(report) -> str:
    if report.skipped:
        return str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    crash = getattr(report.longrepr, "reprcrash", None)
    return " ".join((crash.message if crash else str(report.longrepr)).split())[:300]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    failed_setup = report.when == "setup" and not report.passed
    if report.when == "call" or failed_setup:
        _results.append({"test": item.originalname, "model": _model_of(item), "outcome": report.outcome,
                         "reason": "" if report.passed else _reason(report), "seconds": round(report.duration, 1)})


def pytest_sessionfinish(session):
    with open(os.environ["VZ_TIMM_RESULTS"], "w") as f:
        json.dump(_results, f, indent=1)
