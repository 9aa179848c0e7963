"""Deployment paths of a model, each returning the largest |difference| from eager (issue 21 A).

Shared by ``tests/models/test_deploy.py`` and the README's support table. Every path builds its own
tiny model (``tests.models.create_tiny``) from a fixed seed, so eager and deployed copies hold the
same weights; inputs are 64 x 64 (and 96 x 80 for the second shape / dynamic dims).
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import torch

from tests.models import create_tiny
from visionzoo.models._registry import FAMILIES, MODELS, tiny_overrides

X1, X2 = (2, 3, 64, 64), (3, 3, 96, 80)
#: example input of the dynamic-size export: 64 x 64 leaves a 1 x 1 last map in some families, and
#: torch.export specialises a size-1 dimension (its 0/1 rule)
X_SPATIAL = (2, 3, 128, 128)


def representatives() -> dict[str, str]:
    """family -> its first registered model (the smallest variant, by the tables' order)."""
    return {f: next(m for m, e in MODELS.items() if e.family == f) for f in FAMILIES}


def _model(name: str, train: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_tiny(name, num_classes=5).train(train)


def _inputs(*shapes):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(s, generator=g) for s in shapes]


def _diff(a, b) -> float:
    if isinstance(a, (list, tuple)):
        return max(_diff(u, v) for u, v in zip(a, b, strict=True))
    return float((a - b).abs().max())


def export_eval(name: str, spatial: bool) -> float:
    """``torch.export.export`` in eval mode with a dynamic batch (and dynamic H, W if ``spatial``),
    run at another batch (and size)."""
    model = _model(name)
    x, x2 = _inputs(X_SPATIAL, X2) if spatial else _inputs(X1, (3,) + X1[1:])
    dyn = torch.export.Dim.DYNAMIC
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: dyn, 2: dyn, 3: dyn} if spatial else {0: dyn},))
    assert "mkldnn" not in str(ep.graph)  # the fused eval path never runs while exporting
    with torch.no_grad():
        return max(_diff(ep.module()(t), model(t)) for t in (x, x2))


def export_train(name: str) -> float:
    """``torch.export.export`` in train mode (batch-statistics norms, no dropout in the tiny configs)."""
    model = _model(name, train=True)
    (x,) = _inputs(X1)
    ep = torch.export.export(model, (x,))
    return _diff(ep.module()(x), _model(name, train=True)(x))


def onnx_dynamo(name: str) -> float:
    """``torch.onnx.export(..., dynamo=True)`` with a dynamic batch, run in onnxruntime at two batches."""
    import onnxruntime as ort
    model = _model(name)
    x, x2 = _inputs(X1, (3,) + X1[1:])
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(model, (x,), path, dynamo=True, dynamic_shapes=({0: "batch"},), verbose=False)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name
    with torch.no_grad():
        return max(float(abs(sess.run(None, {feed: t.numpy()})[0] - model(t).numpy()).max()) for t in (x, x2))


def jit_trace(name: str) -> float:
    model = _model(name)
    (x,) = _inputs(X1)
    with torch.no_grad():
        traced = torch.jit.trace(model, (x,), check_trace=False)
        assert "mkldnn" not in str(traced.inlined_graph)
        return _diff(traced(x), model(x))


#: Inductor options for symbolic sizes (the README's Deploy section): torch 2.14's Inductor sorts the strides of a
#: channels-last view that a training graph saves for backward (the NCHW view of an NHWC map fed to a convolution)
#: without its shape environment, and sympy cannot order conv output sizes such as ``16 * ((H - 1) // 4 + 1)``:
#: "cannot determine truth value of Relational" (pytorch/pytorch#185510, open). Exact output strides skip that sort.
INDUCTOR_OPTIONS = {"strict_output_strides": True}


def compile_train(name: str, backend: str = "aot_eager", dynamic: bool | None = None,
                  options: dict | None = None) -> float:
    """``torch.compile(fullgraph=True)`` in train mode at two input shapes: outputs and every gradient."""
    torch._dynamo.reset()  # one process compiles many models: their shared blocks would hit the recompile limit
    model, ref = _model(name, train=True), _model(name, train=True)
    compiled = torch.compile(model, fullgraph=True, backend=backend, dynamic=dynamic, options=options)
    worst = 0.0
    for x in _inputs(X1, X2):
        out, want = compiled(x), ref(x)
        out.square().mean().backward()
        want.square().mean().backward()
        grads = [(p.grad, q.grad) for p, q in zip(model.parameters(), ref.parameters()) if q.grad is not None]
        worst = max(worst, _diff(out, want), *(_diff(a, b) for a, b in grads))
        model.zero_grad()
        ref.zero_grad()
    return worst


def fx_features(name: str) -> float:
    """torchvision's ``create_feature_extractor`` through timm (its registered leaf modules and
    functions) on every stage output, against the same modules' outputs in eager (forward hooks)."""
    from timm.models import create_feature_extractor
    model = _model(name)
    nodes = {f"stages.{i}": str(i) for i in range(len(model.stages))}
    fx = create_feature_extractor(model, return_nodes=nodes)
    want = []
    hooks = [stage.register_forward_hook(lambda m, i, o: want.append(o)) for stage in model.stages]
    (x,) = _inputs(X1)
    with torch.no_grad():
        got = list(fx(x).values())
        model(x)
    for h in hooks:
        h.remove()
    return _diff(got, want)


def timm_feature_cls(name: str, feature_cls: str) -> float:
    """timm ``features_only=True, feature_cls=...`` returns the same NCHW maps as the default wrapper."""
    import timm
    kw = tiny_overrides(name)
    torch.manual_seed(0)
    plain = timm.create_model("vz_" + name, features_only=True, **kw).eval()
    other = timm.create_model("vz_" + name, features_only=True, feature_cls=feature_cls, **kw).eval()
    other.load_state_dict(plain.state_dict())
    (x,) = _inputs(X1)
    with torch.no_grad():
        got, want = other(x), plain(x)
    for t, c in zip(got, plain.feature_info.channels(), strict=True):
        assert t.shape[1] == c, f"{feature_cls}: {tuple(t.shape)} is not NCHW with {c} channels"
    return _diff(got, want)


# --- measured results and the README's support table -------------------------------------------------------------

#: README columns: (heading, paths shown in the cell); a cell with two paths reads "first (dynamic: second)"
COLUMNS = (
    ("export, dyn. batch", ("export_eval",)),
    ("export, dyn. H, W", ("export_spatial",)),
    ("export, train", ("export_train",)),
    ("ONNX + ort", ("onnx",)),
    ("jit.trace", ("trace",)),
    ("compile, train", ("compile", "compile_dynamic")),
    ("Inductor, train", ("inductor", "inductor_dynamic")),
    ("FX features", ("fx",)),
    ("timm hook / fx", ("hook", "timm_fx")),
)
RESULTS_ENV = "VISIONZOO_DEPLOY_RESULTS"


def describe(error: BaseException) -> str:
    """An exception in one line (type and the first line of its message)."""
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first[:200]}"


def record(family: str, name: str, path: str, seconds: float, diff: float | None = None,
           error: str | None = None) -> None:
    """Append one measurement to the JSON-lines file named by ``$VISIONZOO_DEPLOY_RESULTS`` (nothing if unset)."""
    import json
    import os
    target = os.environ.get(RESULTS_ENV)
    if target:
        row = {"family": family, "model": name, "path": path, "seconds": round(seconds, 1), "diff": diff,
               "error": error}
        with open(target, "a") as f:
            f.write(json.dumps(row) + "\n")


def _number(diff: float) -> str:
    return "0" if diff == 0 else f"{diff:.1e}"


def table(rows: list[dict]) -> str:
    """The README's support table (markdown) and its footnotes from :func:`record`'s rows; the last row of a
    (family, path) wins. Failures get a numbered footnote with their reason; "·": not measured."""
    latest = {(r["family"], r["path"]): r for r in rows}
    models = {**representatives(), **{r["family"]: r["model"] for r in rows}}
    notes: list[str] = []

    def cell(family: str, path: str) -> str | None:
        r = latest.get((family, path))
        if r is None:
            return None
        if r["error"] is not None:
            if r["error"] not in notes:
                notes.append(r["error"])
            word = "not run" if r["error"].startswith("not measured") else "fails"
            return f"{word} [{notes.index(r['error']) + 1}]"
        if path in ("hook", "timm_fx") and r["diff"] == 0:
            return "ok"
        return _number(r["diff"])

    lines = ["| family (model) | " + " | ".join(h for h, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for family in sorted(models):
        cells = []
        for _, paths in COLUMNS:
            got = [cell(family, p) for p in paths]
            if len(paths) == 2 and paths[1].endswith("_dynamic"):
                text = got[0] or "·"
                cells.append(text if got[1] is None else f"{text} (dynamic: {got[1]})")
            else:
                shown = [g for g in got if g is not None]
                cells.append(" / ".join(dict.fromkeys(shown)) if shown else "·")
        lines.append(f"| {family} ({models[family]}) | " + " | ".join(cells) + " |")
    lines += [""] + [f"[{i}] {reason}" for i, reason in enumerate(notes, 1)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json
    parser = argparse.ArgumentParser(description="Print the README's deploy support table from measured results.")
    parser.add_argument("--table", required=True, metavar="FILE", help=f"JSON lines written with ${RESULTS_ENV}")
    args = parser.parse_args(argv)
    with open(args.table) as f:
        print(table([json.loads(line) for line in f if line.strip()]))


if __name__ == "__main__":
    main()
