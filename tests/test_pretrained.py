"""``create_model(name, pretrained=True)``: every source layout through the normal download path, offline.

A temporary Hugging Face cache in huggingface_hub's own layout (``models--org--name/{blobs,refs,snapshots}``)
with ``HF_HUB_OFFLINE=1`` holds small random-weight checkpoints in the layout each source publishes:

* transformers (``shi-labs/*``, ``Visual-Attention-Network/*``): the official parity fixtures' weights renamed
  into transformers' key set. That key set is taken from transformers' own classes: DiNAT live from the
  installed package; NAT and VAN, which transformers 5 removed, from ``fixtures/transformers/keys.json``
  (recorded from transformers 4.57.1's classes, see its README). The converted model reproduces the fixture
  outputs;
* timm (``timm/shvit_s1.in1k``): a timm model's own state dict; our model matches timm's outputs;
* official release URLs (LITv2, DiNAT_s): torch.hub's downloader patched at its boundary to serve the
  fixture file, so timm's URL path, the cache and the conversion all run.

Architectures come from the fixtures' official constructor calls (tiny configs, passed as overrides).
"""

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import pytest
import timm
import torch
from safetensors.torch import save_file

import visionzoo
from visionzoo.models import _hf_layout, _pretrained_sources
from visionzoo.models._registry import FAMILIES, MODELS

from .fixtures import HERE, assert_matches_fixture, load_fixture

KEYS = json.loads((HERE / "transformers" / "keys.json").read_text())


# ---- a Hugging Face cache on disk ---------------------------------------------------------------
def put_in_hf_cache(cache: Path, repo_id: str, filename: str, payload: bytes) -> Path:
    """Store ``payload`` as ``repo_id``/``filename`` at revision ``main`` the way huggingface_hub does."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    blob = repo / "blobs" / hashlib.sha256(payload).hexdigest()
    snap = repo / "snapshots" / commit / filename
    blob.parent.mkdir(parents=True, exist_ok=True)
    snap.parent.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    blob.write_bytes(payload)
    if snap.exists() or snap.is_symlink():
        snap.unlink()
    snap.symlink_to(os.path.relpath(blob, snap.parent))
    (repo / "refs" / "main").write_text(commit)
    return snap


def _pth_bytes(sd: dict, tmp: Path) -> bytes:
    path = tmp / "payload.pth"
    torch.save(sd, path)
    return path.read_bytes()


def _safetensors_bytes(sd: dict, tmp: Path) -> bytes:
    path = tmp / "payload.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path.read_bytes()


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty offline Hub cache that huggingface_hub (and so timm's loader) reads by default."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


# ---- official fixture weights -> transformers layouts (independent of visionzoo's converter) -----------
def _official_to_nat_transformers(sd: dict, prefix: str) -> dict:
    """Official NAT/DiNAT keys -> transformers ``<prefix>.*`` keys, written out from transformers' modules."""
    out = {}
    names = {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.rpb": "attention.self.rpb",
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    for k, v in sd.items():
        if k.startswith("patch_embed.proj."):
            out[f"{prefix}.embeddings.patch_embeddings.projection.{k[len('patch_embed.proj.') :]}"] = v
        elif k.startswith("patch_embed.norm."):
            out[f"{prefix}.embeddings.norm.{k[len('patch_embed.norm.') :]}"] = v
        elif k.startswith("head."):
            out["classifier." + k[len("head.") :]] = v
        elif k.startswith("norm."):
            out[f"{prefix}.layernorm.{k[len('norm.') :]}"] = v
        elif ".downsample." in k:
            out[f"{prefix}.encoder.{k}"] = v
        else:  # levels.i.blocks.j.<module>.<param>
            _, i, _, j, rest = k.split(".", 4)
            base = f"{prefix}.encoder.levels.{i}.layers.{j}."
            if rest.startswith("attn.qkv."):
                for part, t in zip(("query", "key", "value"), v.chunk(3, dim=0)):
                    out[f"{base}attention.self.{part}.{rest.rsplit('.', 1)[1]}"] = t
            elif rest in ("gamma1", "gamma2"):
                out.setdefault(base + "layer_scale_parameters", [None, None])[int(rest[-1]) - 1] = v
            else:
                module, param = rest.rsplit(".", 1) if rest != "attn.rpb" else ("attn.rpb", None)
                out[base + names[module] + (f".{param}" if param else "")] = v
    return {k: torch.stack(v) if isinstance(v, list) else v for k, v in out.items()}


def _official_to_van_transformers(sd: dict) -> dict:
    """Official VAN keys -> transformers ``VanForImageClassification`` keys."""
    block = {
        "norm1": "pre_normomalization",
        "norm2": "post_normalization",
        "attn.proj_1": "attention.pre_projection.conv",
        "attn.proj_2": "attention.post_projection",
        "attn.spatial_gating_unit.conv0": "attention.attention_layer.attention.depth_wise",
        "attn.spatial_gating_unit.conv_spatial": "attention.attention_layer.attention.depth_wise_dilated",
        "attn.spatial_gating_unit.conv1": "attention.attention_layer.attention.point_wise",
        "mlp.fc1": "mlp.in_dense",
        "mlp.dwconv.dwconv": "mlp.depth_wise",
        "mlp.fc2": "mlp.out_dense",
    }
    out = {}
    for k, v in sd.items():
        head, rest = k.split(".", 1)
        if head == "head":
            out["classifier." + rest] = v
        elif head.startswith("patch_embed"):
            module, param = rest.split(".")
            name = {"proj": "convolution", "norm": "normalization"}[module]
            out[f"van.encoder.stages.{int(head[-1]) - 1}.embeddings.{name}.{param}"] = v
        elif head.startswith("norm"):
            out[f"van.encoder.stages.{int(head[-1]) - 1}.normalization.{rest}"] = v
        else:  # block{s}.{j}.<module>.<param>
            j, rest = rest.split(".", 1)
            base = f"van.encoder.stages.{int(head[-1]) - 1}.layers.{j}."
            if rest in ("layer_scale_1", "layer_scale_2"):
                out[base + ("attention_scaling" if rest.endswith("1") else "mlp_scaling") + ".weight"] = v
            else:
                module, param = rest.rsplit(".", 1)
                out[base + block[module] + "." + param] = v
    # transformers' VanModel.layernorm exists in the checkpoints but its forward never uses it
    width = sd["head.weight"].shape[1]
    out["van.layernorm.weight"], out["van.layernorm.bias"] = torch.randn(width), torch.randn(width)
    return out


def _shapes(sd: dict) -> dict:
    return {k: list(v.shape) for k, v in sd.items()}


def _dinat_transformers_listing(fixture_kwargs: dict, monkeypatch) -> dict:
    transformers = pytest.importorskip("transformers", reason="the DiNAT key set comes from transformers' own class")
    import natten.functional

    # transformers' modeling_dinat imports NATTEN<0.17 kernels that natten 0.21 removed; only the keys are needed
    for fn in ("natten2dav", "natten2dqkrpb"):
        monkeypatch.setattr(natten.functional, fn, getattr(natten.functional, fn, None), raising=False)
    config = transformers.DinatConfig(
        embed_dim=fixture_kwargs["embed_dim"],
        depths=fixture_kwargs["depths"],
        num_heads=fixture_kwargs["num_heads"],
        kernel_size=fixture_kwargs["kernel_size"],
        mlp_ratio=float(fixture_kwargs["mlp_ratio"]),
        dilations=fixture_kwargs["dilations"],
        num_labels=10,
    )
    return _shapes(transformers.DinatForImageClassification(config).state_dict())


def _official_build(fixture: str):
    """(registered family, overrides and model kwargs of the fixture's official constructor call)."""
    meta, tensors, sd = load_fixture(fixture)
    builders = {name: fam for fam in FAMILIES.values() for name in fam.official}
    kwargs = dict(meta["constructor_kwargs"])
    _, overrides, model_kwargs = builders[meta["family"]].official[meta["family"]](kwargs)
    return meta, tensors, sd, {**overrides, **model_kwargs}


# ---- transformers layout: parity through the Hub cache ---------------------------------------------
@pytest.mark.parametrize("name, prefix", [("dinat_tiny", "dinat"), ("nat_mini", "nat")])
def test_nat_transformers_checkpoint_from_hub_cache_matches_fixture(hf_cache, tmp_path, monkeypatch, name, prefix):
    meta, tensors, sd, build = _official_build("nat_a")
    hf_sd = _official_to_nat_transformers(sd, prefix)
    if prefix == "dinat":
        expected = _dinat_transformers_listing(meta["constructor_kwargs"], monkeypatch)
    else:  # transformers 5 removed NAT; same modules as DiNAT without dilations, recorded from 4.57.1
        expected = KEYS["nat_a"]["state_dict"]
    assert _shapes(hf_sd) == expected
    src = _pretrained_sources.source(name)
    assert src.layout == "transformers" and src.kind == "hf-hub"
    put_in_hf_cache(hf_cache, src.location, src.filename, _pth_bytes(hf_sd, tmp_path))
    model = visionzoo.create_model(name, pretrained=True, pretrained_cfg_overlay={"num_classes": 10}, **build)
    assert_matches_fixture(model, tensors)


def test_nat_transformers_layer_scale_splits_into_gamma1_gamma2():
    listing = KEYS["nat_a_layer_scale"]["state_dict"]
    sd = {k: torch.randn(shape) for k, shape in listing.items()}
    official = _hf_layout.nat_to_official(sd)
    key = "nat.encoder.levels.1.layers.0.layer_scale_parameters"
    torch.testing.assert_close(official["levels.1.blocks.0.gamma1"], sd[key][0])
    torch.testing.assert_close(official["levels.1.blocks.0.gamma2"], sd[key][1])
    q, k, v = (sd[f"nat.encoder.levels.1.layers.0.attention.self.{p}.weight"] for p in ("query", "key", "value"))
    torch.testing.assert_close(official["levels.1.blocks.0.attn.qkv.weight"], torch.cat([q, k, v]))


def test_van_transformers_checkpoint_from_hub_cache_matches_fixture(hf_cache, tmp_path):
    _, tensors, sd, build = _official_build("van_a")
    hf_sd = _official_to_van_transformers(sd)
    assert _shapes(hf_sd) == KEYS["van_a"]["state_dict"]
    src = _pretrained_sources.source("van_b0")
    put_in_hf_cache(hf_cache, src.location, src.filename, _pth_bytes(hf_sd, tmp_path))
    model = visionzoo.create_model("van_b0", pretrained=True, pretrained_cfg_overlay={"num_classes": 10}, **build)
    assert_matches_fixture(model, tensors)


def test_transformers_checkpoint_through_checkpoint_path(tmp_path):
    """A transformers file downloaded by hand loads through checkpoint_path= too."""
    _, tensors, sd, build = _official_build("van_a")
    path = tmp_path / "pytorch_model.bin"
    torch.save(_official_to_van_transformers(sd), path)
    model = visionzoo.create_model("van_b0", checkpoint_path=path, **build)
    assert_matches_fixture(model, tensors)


def test_cache_dir_argument_is_honoured(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "default-cache-stays-empty"))
    _, tensors, sd, build = _official_build("van_a")
    src = _pretrained_sources.source("van_b0")
    put_in_hf_cache(
        tmp_path / "mine", src.location, src.filename, _pth_bytes(_official_to_van_transformers(sd), tmp_path)
    )
    model = visionzoo.create_model(
        "van_b0", pretrained=True, cache_dir=tmp_path / "mine", pretrained_cfg_overlay={"num_classes": 10}, **build
    )
    assert_matches_fixture(model, tensors)


def test_offline_without_the_file_does_not_reach_the_network(hf_cache):
    from huggingface_hub.errors import LocalEntryNotFoundError

    with pytest.raises(LocalEntryNotFoundError):
        visionzoo.create_model("dinat_tiny", pretrained=True, **visionzoo.models._registry.tiny_overrides("dinat_tiny"))


# ---- features_only drops the head -----------------------------------------------------------------
def test_features_only_with_pretrained_matches_fixture_stages(hf_cache, tmp_path):
    _, tensors, sd, build = _official_build("van_a")
    src = _pretrained_sources.source("van_b0")
    put_in_hf_cache(hf_cache, src.location, src.filename, _pth_bytes(_official_to_van_transformers(sd), tmp_path))
    feats = visionzoo.create_model(
        "van_b0", pretrained=True, features_only=True, pretrained_cfg_overlay={"num_classes": 10}, **build
    ).eval()
    assert not any(k.startswith("head") for k in feats.state_dict())
    with torch.no_grad():
        maps = feats(tensors["input"].float())
    for i, m in enumerate(maps):
        torch.testing.assert_close(m, tensors[f"stage.{i}"], atol=1e-4, rtol=1e-4)


# ---- timm layout ----------------------------------------------------------------------------------
def test_timm_checkpoint_from_hub_cache_matches_timm(hf_cache, tmp_path):
    """``timm/shvit_s1.in1k`` (model.safetensors, timm's keys): our shvit_s1 computes what timm's does."""
    ref = timm.create_model("shvit_s1").eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    cfg = MODELS["shvit_s1"].pretrained_cfg
    assert cfg["hf_hub_id"] == "timm/shvit_s1.in1k"
    put_in_hf_cache(hf_cache, cfg["hf_hub_id"], "model.safetensors", _safetensors_bytes(ref.state_dict(), tmp_path))
    ours = visionzoo.create_model("shvit_s1", pretrained=True).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)


# ---- official layout from a release URL -----------------------------------------------------------
@pytest.mark.parametrize("name, fixture", [("litv2_small", "litv2_a"), ("dinat_s_tiny", "dinat_s_a")])
def test_official_checkpoint_from_release_url_matches_fixture(tmp_path, monkeypatch, name, fixture):
    _, tensors, sd, build = _official_build(fixture)
    served = tmp_path / "served.pth"
    torch.save({"model": sd}, served)  # official training scripts wrap the weights
    src = _pretrained_sources.source(name)
    requested = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        requested.append(url)
        shutil.copyfile(served, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    cache = tmp_path / "torch-cache"
    model = visionzoo.create_model(
        name, pretrained=True, cache_dir=cache, pretrained_cfg_overlay={"num_classes": 10}, **build
    )
    assert requested == [src.location] and (cache / src.location.rsplit("/", 1)[1]).is_file()
    assert_matches_fixture(model, tensors)


# ---- sources that cannot be downloaded ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["eca_resnet50", "biformer_tiny", "agent_swin_tiny", "flatten_pvt_tiny"])
def test_cloud_share_raises_naming_source_and_checkpoint_path(name):
    src = _pretrained_sources.source(name)
    with pytest.raises(RuntimeError) as err:
        visionzoo.create_model(name, pretrained=True)
    assert src.location in str(err.value) and f"create_model('{name}', checkpoint_path=" in str(err.value)


def test_unknown_tag_lists_the_known_ones():
    with pytest.raises(visionzoo.UnknownModelError, match="in1k, in21k_ft_in1k"):
        visionzoo.create_model("maxvit_base_384.in22k")


# ---- the table itself -------------------------------------------------------------------------------
def test_every_source_is_a_registered_model_with_its_tags_in_timm():
    pretrained = set(timm.list_pretrained("vz_*"))
    for name, sources in _pretrained_sources.SOURCES.items():
        assert name in MODELS, name
        assert MODELS[name].tags[-len(sources) :] == tuple(s.tag for s in sources)
        for s in sources:
            downloadable = s.kind != "cloud"
            assert (f"vz_{name}.{s.tag}" in pretrained) == downloadable, (name, s.tag)
            assert s.evidence and (s.top1 is None or 50 < s.top1 < 100)
            if s.kind == "timm":
                assert timm.models.get_pretrained_cfg(s.location) is not None, s.location


def test_data_config_follows_the_checkpoint():
    cfg = MODELS["maxvit_base_384"].tag_cfgs["in21k_ft_in1k"]
    timm_cfg = timm.models.get_pretrained_cfg("maxvit_base_tf_384.in21k_ft_in1k")
    assert (cfg["crop_pct"], cfg["crop_mode"], cfg["mean"]) == (timm_cfg.crop_pct, timm_cfg.crop_mode, timm_cfg.mean)
    assert cfg["classifier"] == "head.fc"  # our head name, so timm drops the right keys for a new class count
    assert MODELS["dinat_large_384"].pretrained_cfg["hf_hub_id"] == "shi-labs/dinat-large-in22k-in1k-384"
    assert MODELS["dinat_large_384"].tag == "in22k_ft_in1k"


# ---- python -m visionzoo.hub convert -------------------------------------------------------------------
def _random_timm_shvit_s1():
    ref = timm.create_model("shvit_s1").eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return ref


def _check_export(out: Path, ref: torch.nn.Module, source: str):
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "README.md"}
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "vz_shvit_s1"
    card = (out / "README.md").read_text()
    assert source in card and "license: mit" in card
    reloaded = visionzoo.create_model(f"local-dir:{out}").eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), ref(x), atol=1e-4, rtol=1e-4)


def test_convert_cli_from_a_pretrained_tag(hf_cache, tmp_path):
    ref = _random_timm_shvit_s1()
    put_in_hf_cache(hf_cache, "timm/shvit_s1.in1k", "model.safetensors", _safetensors_bytes(ref.state_dict(), tmp_path))
    out = tmp_path / "export"
    from visionzoo import hub

    assert hub.main(["convert", "--model", "shvit_s1", "--checkpoint", "shvit_s1.in1k", "--out", str(out)]) == 0
    _check_export(out, ref, "shvit_s1.in1k")
    assert "72.8" in (out / "README.md").read_text()  # the original top-1


def test_convert_cli_from_a_file_and_push_to_a_mocked_hub(tmp_path, monkeypatch):
    import huggingface_hub

    ref = _random_timm_shvit_s1()
    ckpt = tmp_path / "shvit_s1_timm.pth"
    torch.save({"state_dict": ref.state_dict()}, ckpt)
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create_repo", repo_id, private, exist_ok))

        def upload_folder(self, folder_path, repo_id, commit_message=""):
            calls.append(("upload_folder", sorted(p.name for p in Path(folder_path).iterdir()), repo_id))
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    from visionzoo import hub

    out = tmp_path / "export"
    argv = ["convert", "--model", "shvit_s1", "--checkpoint", str(ckpt), "--out", str(out), "--push-to-hub", "me/shvit"]
    assert hub.main(argv) == 0
    _check_export(out, ref, "shvit_s1_timm.pth")
    assert calls[1] == ("create_repo", "me/shvit", False, True)
    assert calls[2] == ("upload_folder", ["README.md", "config.json", "model.safetensors"], "me/shvit")


def test_convert_cli_rejects_an_unknown_checkpoint(tmp_path):
    from visionzoo import hub_convert

    with pytest.raises(ValueError, match="--checkpoint 'in22k' is neither an existing file nor a pretrained tag"):
        hub_convert.convert_checkpoint("shvit_s1", "in22k", tmp_path / "x")


def test_dense_feature_adapter_accepts_pretrained(hf_cache, tmp_path):
    """The detection / segmentation feature builder loads released weights too (head dropped)."""
    from visionzoo.dense._common import create_features

    _, tensors, sd, build = _official_build("van_a")
    src = _pretrained_sources.source("van_b0")
    put_in_hf_cache(hf_cache, src.location, src.filename, _pth_bytes(_official_to_van_transformers(sd), tmp_path))
    feats = create_features("van_b0", pretrained=True, pretrained_cfg_overlay={"num_classes": 10}, **build).eval()
    with torch.no_grad():
        maps = feats(tensors["input"].float())
    for i, m in enumerate(maps):
        torch.testing.assert_close(m, tensors[f"stage.{i}"], atol=1e-4, rtol=1e-4)


def test_pretrained_summary_names_each_tag_and_source():
    assert _pretrained_sources.pretrained_summary("maxvit_base_384") == (
        "in1k: timm maxvit_base_tf_384.in1k (timm); in21k_ft_in1k: timm maxvit_base_tf_384.in21k_ft_in1k (timm)"
    )
    assert (
        _pretrained_sources.pretrained_summary("dinat_tiny") == "in1k: hf shi-labs/dinat-tiny-in1k-224 (transformers)"
    )
    assert _pretrained_sources.pretrained_summary("halonet_h0") == "–"


def _timm_sources():
    return [(n, s) for n, sources in _pretrained_sources.SOURCES.items() for s in sources if s.kind == "timm"]


def _assert_timm_source_converts(name: str, src) -> None:
    """timm's own model of the source tag (meta device) -> our converter -> exactly our keys and shapes."""
    num_classes = MODELS[name].tag_cfgs[src.tag]["num_classes"]
    with torch.device("meta"):
        ref = timm.create_model(src.location.split(".")[0], num_classes=num_classes)
    ours = visionzoo.create_model(f"{name}.{src.tag}", device="meta")
    assert ours.num_classes == num_classes
    converted = FAMILIES[MODELS[name].family].filter_fn(ref.state_dict(), ours)
    assert _shapes(converted) == _shapes(ours.state_dict())


@pytest.mark.parametrize("name", ["maxvit_tiny", "halonet26t", "se_resnext50_32x4d"])
def test_timm_source_layout_converts(name):
    _assert_timm_source_converts(name, _pretrained_sources.source(name))


@pytest.mark.extended  # every timm-hosted tag (~25 s of meta-device builds); one per family runs by default above
@pytest.mark.parametrize("name, src", _timm_sources(), ids=lambda v: getattr(v, "location", v))
def test_every_timm_source_layout_converts(name, src):
    _assert_timm_source_converts(name, src)


# ---- a real download: huggingface_hub against a loopback "Hub" named by HF_ENDPOINT ----------------------
class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers huggingface_hub's HEAD / GET on ``/<repo>/resolve/main/<file>`` for the files in ``served``."""

    served: ClassVar[dict] = {}
    seen: ClassVar[list] = []

    def _headers(self) -> bytes | None:
        self.seen.append((self.command, self.path))
        payload = self.served.get(self.path)
        if payload is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(200)
        self.send_header("X-Repo-Commit", "a" * 40)
        self.send_header("ETag", f'"{hashlib.sha256(payload).hexdigest()}"')
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        return payload

    def do_HEAD(self):
        self._headers()

    def do_GET(self):
        payload = self._headers()
        if payload is not None:
            self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_download_through_hf_endpoint_into_a_fresh_cache(tmp_path):
    """A fresh interpreter with HF_ENDPOINT / HF_HUB_CACHE set: pretrained=True downloads the transformers file
    from the endpoint, stores it in the Hub cache layout, converts it and reproduces the fixture."""
    _, tensors, sd, _ = _official_build("nat_a")
    src = _pretrained_sources.source("dinat_tiny")
    _FakeHub.served = {
        f"/{src.location}/resolve/main/{src.filename}": _pth_bytes(_official_to_nat_transformers(sd, "dinat"), tmp_path)
    }
    _FakeHub.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cache, out = tmp_path / "fresh-cache", tmp_path / "logits.pt"
    script = (
        "import torch, visionzoo, tests.test_pretrained as T\n"
        "_, tensors, _, build = T._official_build('nat_a')\n"
        "model = visionzoo.create_model('dinat_tiny', pretrained=True,\n"
        "                               pretrained_cfg_overlay={'num_classes': 10}, **build)\n"
        f"torch.save(model.eval()(tensors['input'].float()).detach(), {str(out)!r})\n"
    )
    env = dict(
        os.environ,
        HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}",
        HF_HUB_CACHE=str(cache),
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    env.pop("HF_HUB_OFFLINE", None)
    try:
        run = subprocess.run(
            [sys.executable, "-c", script],
            cwd=HERE.parents[1],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        server.shutdown()
    assert run.returncode == 0, run.stderr[-3000:]
    torch.testing.assert_close(torch.load(out), tensors["logits"], atol=1e-4, rtol=1e-4)
    assert ("GET", f"/{src.location}/resolve/main/{src.filename}") in _FakeHub.seen
    assert (cache / f"models--{src.location.replace('/', '--')}" / "snapshots" / ("a" * 40) / src.filename).is_file()


def test_default_tag_keeps_the_family_head_when_only_other_class_counts_are_released():
    """maxvit_xlarge has only ImageNet-21k weights: create_model keeps 1000 classes, the 21k head is a tag."""
    assert MODELS["maxvit_xlarge"].tags == ("in1k", "in21k")
    assert visionzoo.create_model("maxvit_xlarge", device="meta").num_classes == 1000
    assert visionzoo.create_model("maxvit_xlarge.in21k", device="meta").num_classes == 21843
    with pytest.raises(RuntimeError, match=r"create_model\('maxvit_xlarge.in21k', pretrained=True\)"):
        visionzoo.create_model("maxvit_xlarge", pretrained=True, device="meta")
