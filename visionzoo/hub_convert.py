"""Convert released weights into a Hub-ready visionzoo folder (and optionally upload it).

    python -m visionzoo.hub convert --model dinat_tiny --checkpoint in1k --out out/dinat_tiny
    python -m visionzoo.hub convert --model van_b0 --checkpoint ~/Downloads/van_tiny_754.pth.tar --out out/van_b0
    python -m visionzoo.hub convert ... --push-to-hub org/repo

``--checkpoint`` is a file (any layout the family converter reads: official, timm, transformers, visionzoo)
or a pretrained tag of the model (``in1k`` or ``dinat_tiny.in1k``: downloaded through
``create_model(..., pretrained=True)``). The folder gets ``model.safetensors``, timm's ``config.json`` and a
model card naming the source, license and original top-1; it is verified by reloading it with
``create_model("local-dir:<out>")`` and comparing the outputs. ``--push-to-hub`` uploads the folder with
huggingface_hub's ``HfApi.upload_folder``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from timm.models._hub import generate_readme, save_for_hf

from ._factory import count_params, create_model
from .models import _pretrained_sources
from .models._registry import MODELS, PREFIX

__all__ = ["add_convert_parser", "convert_checkpoint", "push_to_hub", "run_convert"]


def _resolve(model: str, checkpoint: str) -> tuple[torch.nn.Module, dict]:
    """(the loaded model in eval mode, what the card says about where its weights came from)."""
    if model not in MODELS:
        raise ValueError(f"--model {model!r} is not a registered visionzoo model (see visionzoo.list_models())")
    if os.path.isfile(checkpoint):
        net = create_model(model, checkpoint_path=checkpoint)
        return net.eval(), {"Source": f"checkpoint file `{os.path.basename(checkpoint)}` (converted by visionzoo)"}
    tag = checkpoint.split(".", 1)[1] if checkpoint.startswith(model + ".") else checkpoint
    if tag not in MODELS[model].tags:
        raise ValueError(
            f"--checkpoint {checkpoint!r} is neither an existing file nor a pretrained tag of {model!r} "
            f"(tags: {', '.join(MODELS[model].tags)})"
        )
    net = create_model(f"{model}.{tag}", pretrained=True)
    src = _pretrained_sources.source(model, tag)
    facts = {"Source": f"{src.location} {src.filename}".strip() + f" ({src.kind}, {src.layout} layout)"}
    facts["Original top-1"] = f"{src.top1}" if src.top1 is not None else "not recorded"
    facts["Evidence"] = src.evidence
    return net.eval(), facts


def _card(model: str, net: torch.nn.Module, facts: dict) -> str:
    cfg = net.pretrained_cfg
    size = cfg["input_size"]
    card = {
        "license": cfg.get("license", "unknown"),
        "tags": ["image-classification", "timm", "visionzoo"],
        "description": f"visionzoo `{model}` ({MODELS[model].family} family) with converted released weights.",
        "details": {
            "Model Type": "Image classification / feature backbone",
            "Model Stats": {
                "Params (M)": f"{count_params(net) / 1e6:.2f}",
                "Image size": f"{size[1]} x {size[2]}",
                "Crop": f"{cfg.get('crop_pct')} ({cfg.get('crop_mode', 'center')}), {cfg.get('interpolation')}",
            },
            "License": cfg.get("license", "unknown"),
            **facts,
            "Original": cfg.get("origin_url", ""),
        },
        "usage": "```python\nimport visionzoo\n\nmodel = visionzoo.create_model('hf-hub:<this repo>').eval()\n```",
    }
    return generate_readme(card, PREFIX + model)


def convert_checkpoint(model: str, checkpoint: str, out: str | os.PathLike, atol: float = 1e-5) -> Path:
    """Write ``out/{model.safetensors, config.json, README.md}`` and verify it reloads to the same outputs."""
    net, facts = _resolve(model, checkpoint)
    out = Path(out)
    save_for_hf(net, str(out), safe_serialization=True)
    (out / "README.md").write_text(_card(model, net, facts))
    reloaded = create_model(f"local-dir:{out}").eval()
    x = torch.randn(1, *net.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = net(x), reloaded(x)
    if not torch.allclose(want, got, atol=atol, rtol=atol):
        raise RuntimeError(f"{out}: the reloaded model's outputs differ (max {float((want - got).abs().max()):.3g})")
    return out


def push_to_hub(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create ``repo_id`` if needed and upload ``folder``; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="visionzoo converted weights")
    return str(getattr(info, "commit_url", info))


def add_convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert released weights into a Hub-ready folder (optionally upload it)")
    p.add_argument("--model", required=True, help="registered model name, e.g. dinat_tiny")
    p.add_argument("--checkpoint", required=True, help="checkpoint file, or a pretrained tag (in1k / dinat_tiny.in1k)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the folder to this Hub repository")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repository")


def run_convert(args) -> int:
    out = convert_checkpoint(args.model, args.checkpoint, args.out)
    print(f"wrote and verified {out}")
    if args.push_to_hub:
        print(f"uploaded: {push_to_hub(out, args.push_to_hub, private=args.private)}")
    return 0
