"""Hugging Face Hub configs and model cards, generated from the registry.

    python -m visionzoo.hub export hub_configs/     # one folder per model: config.json + README.md
    python -m visionzoo.hub readme README.md         # rewrite the README's model table
    python -m visionzoo.hub readme README.md --check # fail if the table is stale

``config.json`` is timm's own schema (written by ``timm.models.save_config_for_hf``) with
``architecture = vz_<name>`` plus visionzoo facts (param count, GMACs, official top-1). Tests
regenerate both into a temporary folder and fail on any drift from what is committed.
:func:`save_pretrained` exports weights + config so that ``visionzoo.create_model("local-dir:...")`` (or
``timm.create_model("local-dir:...", pretrained=True)`` after ``import visionzoo``: timm loads an export's
weights only with ``pretrained=True``) rebuilds the identical model offline.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile

import torch
from timm.models._hub import generate_readme, save_config_for_hf, save_for_hf
from torch.utils.flop_counter import FlopCounterMode

from ._factory import count_params, create_model, list_models, model_info
from .models._pretrained_sources import card_weights, hub_facts, pretrained_summary
from .models._registry import MODELS, PREFIX
from .ops import use_backend

__all__ = ["gmacs", "hub_config", "model_card", "export", "model_table", "update_readme", "save_pretrained"]

_TABLE_START, _TABLE_END = "<!-- model-table:start -->", "<!-- model-table:end -->"


@functools.lru_cache(maxsize=None)
def gmacs(name: str) -> float:
    """Multiply-accumulates (G) of one image at the default input size; papers call these "FLOPs".

    Counted on the meta device through the ``reference`` backend, i.e. the op's arithmetic, not
    what a particular fast path executes.
    """
    model = create_model(name, device="meta").eval()
    x = torch.empty((1, *MODELS[name].pretrained_cfg["input_size"]), device="meta")
    with use_backend("reference"), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2 / 1e9


def hub_config(name: str) -> dict:
    """timm ``config.json`` content for ``name`` (built on the meta device)."""
    model = create_model(name, device="meta")
    info = model_info(name)
    extra = dict(visionzoo=dict(
        family=info["family"], param_count=count_params(model), gmacs=round(gmacs(name), 3),
        official_params_key=info.get("official_params_key"), official_top1=info.get("top1"),
        official_top1_source=info.get("top1_source"), feature_info=info["feature_info"],
        pretrained_tags=hub_facts(name)))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.json")
        save_config_for_hf(model, path, model_config=extra)
        with open(path) as f:
            return json.load(f)


def model_card(name: str, config: dict | None = None) -> str:
    config = config or hub_config(name)
    cfg, vz = config["pretrained_cfg"], config["visionzoo"]
    size = cfg["input_size"]
    weights, load = card_weights(name)
    card = dict(
        license=cfg.get("license", "apache-2.0"), tags=["image-classification", "timm", "visionzoo"],
        description=f"A {vz['family']} image classification model / feature backbone from visionzoo. "
                    f"{cfg.get('paper_name', '')}. {weights}",
        details={
            "Model Type": "Image classification / feature backbone",
            "Model Stats": {"Params (M)": f"{vz['param_count'] / 1e6:.2f}", "GMACs": f"{vz['gmacs']:.2f}",
                            "Image size": f"{size[1]} x {size[2]}"},
            "Papers": {cfg.get("paper_name", ""): f"https://arxiv.org/abs/{cfg.get('paper_ids', '').split(':')[-1]}"},
            "Original": cfg.get("origin_url", ""),
            "Official top-1": f"{vz['official_top1']} ({vz['official_top1_source']})" if vz["official_top1"] else "n/a",
        },
        usage=("```python\nimport visionzoo\n\n"
               f"{load}\n"
               f"features = visionzoo.create_model('{name}', features_only=True)\n```"),
    )
    return generate_readme(card, PREFIX + name)


def export(out_dir: str, names: list[str] | None = None) -> list[str]:
    """Write ``<out_dir>/<name>/config.json`` and ``README.md`` for every (or the given) model."""
    written = []
    for name in names or list_models():
        folder = os.path.join(out_dir, name)
        os.makedirs(folder, exist_ok=True)
        config = hub_config(name)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        with open(os.path.join(folder, "README.md"), "w") as f:
            f.write(model_card(name, config))
        written.append(folder)
    return written


def model_table() -> str:
    """Markdown table of every registered model, from the registry."""
    rows = ["| model | family | params (M) | GMACs | input | official top-1 | pretrained (tag: source) |",
            "|---|---|---:|---:|---|---:|---|"]
    for name in list_models():
        info = model_info(name)
        size = info["input_size"]
        top1 = f"{info['top1']:.2f}" if info.get("top1") else "–"
        rows.append(f"| `{name}` | {info['family']} | {info['params'] / 1e6:.2f} | {gmacs(name):.2f} | "
                    f"{size[1]}×{size[2]} | {top1} | {pretrained_summary(name)} |")
    return "\n".join(rows)


def update_readme(path: str, check: bool = False) -> bool:
    """Replace the table between the model-table markers; with ``check``, only report staleness."""
    with open(path) as f:
        text = f.read()
    if _TABLE_START not in text or _TABLE_END not in text:
        raise ValueError(f"{path} has no {_TABLE_START} ... {_TABLE_END} markers")
    head, rest = text.split(_TABLE_START, 1)
    _, tail = rest.split(_TABLE_END, 1)
    new = f"{head}{_TABLE_START}\n{model_table()}\n{_TABLE_END}{tail}"
    if check:
        return new == text
    with open(path, "w") as f:
        f.write(new)
    return True


def save_pretrained(model: torch.nn.Module, directory: str, overwrite: bool = False) -> str:
    """Export ``model`` (weights as safetensors + timm ``config.json``) for ``local-dir:`` loading.

    ``visionzoo.create_model("local-dir:DIR")`` rebuilds the identical model with these weights (as does
    ``timm.create_model("local-dir:DIR", pretrained=True)`` after ``import visionzoo``; without
    ``pretrained=True`` timm builds the architecture with random weights, as for any timm name). A
    ``features_only`` model is exported as itself (``model_args`` records ``features_only`` and
    ``out_indices``; its pruned weights): load it with ``visionzoo.create_model``. An existing export in
    ``directory`` is replaced only with ``overwrite=True``.
    """
    from .models._base import BackboneFeatures
    cfg_path = os.path.join(directory, "config.json")
    if os.path.exists(cfg_path) and not overwrite:
        raise FileExistsError(f"save_pretrained: {cfg_path!r} already exists; pass overwrite=True to replace "
                              "that export, or choose another directory")
    if isinstance(model, BackboneFeatures):
        # timm records the create_model arguments (architecture overrides included) on the outer module
        model_args = {**getattr(model, "_model_args", {}), "features_only": True,
                      "out_indices": [int(i) for i in model.out_indices]}
        save_for_hf(model.model, directory, model_args=model_args, safe_serialization=True)
    else:
        save_for_hf(model, directory, safe_serialization=True)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visionzoo.hub", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_export = sub.add_parser("export", help="write hub_configs/<name>/{config.json,README.md}")
    p_export.add_argument("out_dir")
    p_readme = sub.add_parser("readme", help="rewrite (or --check) the model table in a README")
    p_readme.add_argument("path")
    p_readme.add_argument("--check", action="store_true")
    # convert [--push-to-hub]: released weights -> a Hub folder
    from .hub_convert import add_convert_parser, run_convert

    add_convert_parser(sub)
    args = parser.parse_args(argv)
    if args.cmd == "convert":
        return run_convert(args)
    if args.cmd == "export":
        print(f"wrote {len(export(args.out_dir))} model folders to {args.out_dir}")
        return 0
    ok = update_readme(args.path, check=args.check)
    if args.check and not ok:
        print(f"{args.path}: model table is stale; run python -m visionzoo.hub readme {args.path}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
