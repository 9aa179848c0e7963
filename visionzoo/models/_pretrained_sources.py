"""Where each model's released weights live: one table, read by the registry.

Every entry names a pretrained tag (timm's naming: ``in1k``, ``in22k_ft_in1k``, timm's own tags for
timm-trained weights), the source, the checkpoint's layout (which converter reads it), the
original top-1, license and input/crop settings, and how the facts were confirmed. The registry
turns each entry into a timm ``pretrained_cfg`` (``hf_hub_id`` + ``hf_hub_filename`` or ``url``), so
``create_model(name, pretrained=True)`` downloads through timm's loader and huggingface_hub (HF
cache, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, ``cache_dir=``) and the family's
``checkpoint_filter_fn`` converts the layout (transformers checkpoints first go through
:mod:`._hf_layout`).

Kinds of source:

* ``hf-hub``: a Hugging Face repository and file (the papers' own transformers-layout repos);
* ``timm``: a timm pretrained tag; location, file and data config are read from the installed
  timm's ``default_cfgs`` (``timm/<model>.<tag>`` on the Hub or timm's release URL);
* ``url``: a direct download (GitHub release assets, the authors' server);
* ``cloud``: a cloud-drive share (Google Drive, Baidu, OneDrive, Tsinghua Cloud) that is not a plain
  file download: ``pretrained=True`` raises with the link and the ``checkpoint_path=`` call.

Facts marked ``unconfirmed`` could not be checked here (no network besides the mirrored repositories
and stored Hub pages).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "SOURCES",
    "Source",
    "card_weights",
    "hub_facts",
    "pretrained_summary",
    "source",
    "tag_cfgs",
    "unavailable_message",
]

KINDS = ("hf-hub", "timm", "url", "cloud")
LAYOUTS = ("official", "timm", "transformers")


@dataclass(frozen=True)
class Source:
    tag: str
    kind: str
    location: str  # Hub repo id, timm "model.tag", URL, or cloud link
    layout: str
    filename: str = ""  # file in a Hub repo
    top1: float | None = None
    license: str = ""
    data: dict = field(default_factory=dict)  # input/crop settings that differ from the family's
    evidence: str = ""  # where the location, accuracy and license were read

    def __post_init__(self):
        if self.kind not in KINDS or self.layout not in LAYOUTS:
            raise ValueError(f"Source({self.location!r}): kind must be one of {KINDS} and layout one of {LAYOUTS}")


# ---- evidence ------------------------------------------------------------------------------------
_NAT_REPO = "SHI-Labs/Neighborhood-Attention-Transformer @ d334f5b"
_NAT_HUB = (
    "Hub file listing (stored huggingface.co pages): pytorch_model.bin, transformers {cls}, "
    "license mit; top-1 from " + _NAT_REPO + " classification/{md}"
)
_IN22K = {"crop_pct": 1.0}
_VAN_HUB = (
    "Hub file listing (stored huggingface.co pages): pytorch_model.bin, VanForImageClassification, "
    "license apache-2.0; linked from Visual-Attention-Network/VAN-Classification README @ e19779b (top-1)"
)
_TIMM = "installed timm 1.0.31 default_cfgs (location, data config, license)"


def _hub(tag, repo, layout, top1, lic, evidence, filename="pytorch_model.bin", **data):
    return Source(tag, "hf-hub", repo, layout, filename, top1, lic, data, evidence)


def _url(tag, url, top1, lic, evidence, **data):
    return Source(tag, "url", url, "official", "", top1, lic, data, evidence)


def _cloud(tag, link, top1, lic, evidence, **data):
    return Source(tag, "cloud", link, "official", "", top1, lic, data, evidence)


def _timm(tag, timm_tag, top1=None, note=""):
    return Source(tag, "timm", timm_tag, "timm", "", top1, "", {}, _TIMM + (f"; {note}" if note else ""))


_MAXVIT = "top-1 of the TensorFlow release timm ported, google-research/maxvit README (ImageNet-1k)"
_SENET = "top-1 of the original Caffe release (SENet README); the PyTorch port's own number is unconfirmed"


def _nat_hub(size, top1, cls="NatForImageClassification"):
    md = "DiNAT.md" if cls.startswith("Dinat") else "NAT.md"
    return _hub("in1k", f"shi-labs/{size}-in1k-224", "transformers", top1, "mit", _NAT_HUB.format(cls=cls, md=md))


def _dinat_url(path, top1):
    return _url(
        "in1k",
        f"https://shi-labs.com/projects/dinat/checkpoints/{path}",
        top1,
        "mit",
        f"{_NAT_REPO} classification/DiNAT.md checkpoint table (file layout unconfirmed)",
    )


_THU = "LeapLabTHU/{repo} README{where} (Tsinghua Cloud share; license: no LICENSE file upstream)"
_AGENT = _THU.format(repo="Agent-Attention @ 207ce3e", where=" agent_transformer/README.md")
_FLATTEN = _THU.format(repo="FLatten-Transformer @ abdb115", where="")
_LITV2 = "ziplab/LITv2 README @ 7501c86 (GitHub release asset; checkpoint contents unconfirmed)"
_BIFORMER = "rayleizhu/BiFormer README @ 1697bbb (OneDrive share, MIT license)"
_ECA = "BangguWu/ECANet README @ b332f6b (Google Drive / Baidu shares, MIT license)"

# ---- the table: model -> sources, the default tag first --------------------------------------------
SOURCES: dict[str, tuple[Source, ...]] = {
    # NAT / DiNAT: the authors' transformers-layout Hub repos (also released as official .pth on shi-labs.com)
    "nat_mini": (_nat_hub("nat-mini", 81.8),),
    "nat_tiny": (_nat_hub("nat-tiny", 83.2),),
    "nat_small": (_nat_hub("nat-small", 83.7),),
    "nat_base": (_nat_hub("nat-base", 84.3),),
    "dinat_mini": (_nat_hub("dinat-mini", 81.8, "DinatForImageClassification"),),
    "dinat_tiny": (_nat_hub("dinat-tiny", 82.7, "DinatForImageClassification"),),
    "dinat_small": (_nat_hub("dinat-small", 83.8, "DinatForImageClassification"),),
    "dinat_base": (_nat_hub("dinat-base", 84.4, "DinatForImageClassification"),),
    "dinat_large": (
        _hub(
            "in22k_ft_in1k",
            "shi-labs/dinat-large-in22k-in1k-224",
            "transformers",
            86.6,
            "mit",
            _NAT_HUB.format(cls="DinatForImageClassification", md="DiNAT.md"),
        ),
    ),
    "dinat_large_384": (
        _hub(
            "in22k_ft_in1k",
            "shi-labs/dinat-large-in22k-in1k-384",
            "transformers",
            87.4,
            "mit",
            _NAT_HUB.format(cls="DinatForImageClassification", md="DiNAT.md"),
            **_IN22K,
        ),
    ),
    "dinat_large_384_k11": (
        _hub(
            "in22k_ft_in1k",
            "shi-labs/dinat-large-11x11-in22k-in1k-384",
            "transformers",
            87.5,
            "mit",
            _NAT_HUB.format(cls="DinatForImageClassification", md="DiNAT.md"),
            **_IN22K,
        ),
    ),
    # DiNAT_s and the isotropic variants: official .pth files on the authors' server
    "dinat_s_tiny": (_dinat_url("imagenet1k/dinat_s_tiny_1k_224.pth", 81.8),),
    "dinat_s_small": (_dinat_url("imagenet1k/dinat_s_small_1k_224.pth", 83.5),),
    "dinat_s_base": (_dinat_url("imagenet1k/dinat_s_base_1k_224.pth", 83.8),),
    "dinat_s_large": (
        Source(
            "in22k_ft_in1k",
            "url",
            "https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_large_1k_224.pth",
            "official",
            "",
            86.5,
            "mit",
            {},
            f"{_NAT_REPO} classification/DiNAT.md (ImageNet-22k pre-trained; layout unconfirmed)",
        ),
    ),
    "dinat_s_large_384": (
        Source(
            "in22k_ft_in1k",
            "url",
            "https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_large_1k_384.pth",
            "official",
            "",
            87.4,
            "mit",
            _IN22K,
            f"{_NAT_REPO} classification/DiNAT.md (ImageNet-22k pre-trained; layout unconfirmed)",
        ),
    ),
    "nat_isotropic_small": (_dinat_url("isotropic/nat_isotropic_small_in1k_224.pth", 80.0),),
    "nat_isotropic_base": (_dinat_url("isotropic/nat_isotropic_base_in1k_224.pth", 81.6),),
    "dinat_isotropic_small": (_dinat_url("isotropic/dinat_isotropic_small_in1k_224.pth", 80.8),),
    "dinat_isotropic_base": (_dinat_url("isotropic/dinat_isotropic_base_in1k_224.pth", 82.1),),
    "vitrpb_small": (_dinat_url("isotropic/vitrpb_small_in1k_224.pth", 81.2),),
    "vitrpb_base": (_dinat_url("isotropic/vitrpb_base_in1k_224.pth", 82.5),),
    # VAN: transformers-layout Hub repos of the authors' org (the "-original" repos pickle argparse.Namespace,
    # which a weights-only load refuses); B4-B6 have no released file in the README (TODO there)
    "van_b0": (_hub("in1k", "Visual-Attention-Network/van-tiny", "transformers", 75.4, "apache-2.0", _VAN_HUB),),
    "van_b1": (_hub("in1k", "Visual-Attention-Network/van-small", "transformers", 81.1, "apache-2.0", _VAN_HUB),),
    "van_b2": (_hub("in1k", "Visual-Attention-Network/van-base", "transformers", 82.8, "apache-2.0", _VAN_HUB),),
    "van_b3": (_hub("in1k", "Visual-Attention-Network/van-large", "transformers", 83.9, "apache-2.0", _VAN_HUB),),
    # LITv2: GitHub release assets
    **{
        n: (_url("in1k", f"https://github.com/ziplab/LITv2/releases/download/{f}", top1, "apache-2.0", _LITV2),)
        for n, f, top1 in [
            ("litv2_small", "v1.0/litv2_s.pth", 82.0),
            ("litv2_medium", "v1.0/litv2_m.pth", 83.3),
            ("litv2_base", "v1.0/litv2_b.pth", 83.6),
            ("litv2_base_384", "v1.0/litv2_b_384.pth", 84.7),
            ("litv2_small_alpha0", "v1.1/alpha_0.pth", 81.16),
            ("litv2_small_alpha0_5", "v1.1/alpha_0.5.pth", 81.88),
            ("litv2_small_alpha1", "v1.1/alpha_1.pth", 81.89),
        ]
    },
    # SHViT: timm's Hub port (the official GitHub release v1.0/shvit_s{n}.pth holds the same weights, official layout)
    **{
        f"shvit_s{i}": (_timm("in1k", f"shvit_s{i}.in1k", top1),)
        for i, top1 in ((1, 72.8), (2, 75.2), (3, 77.4), (4, 79.4))
    },
    # MaxViT: timm's ports of the TensorFlow release
    "maxvit_tiny": (_timm("in1k", "maxvit_tiny_tf_224.in1k", 83.62, _MAXVIT),),
    "maxvit_tiny_384": (_timm("in1k", "maxvit_tiny_tf_384.in1k", 85.24, _MAXVIT),),
    "maxvit_tiny_512": (_timm("in1k", "maxvit_tiny_tf_512.in1k", 85.72, _MAXVIT),),
    "maxvit_small": (_timm("in1k", "maxvit_small_tf_224.in1k", 84.45, _MAXVIT),),
    "maxvit_small_384": (_timm("in1k", "maxvit_small_tf_384.in1k", 85.74, _MAXVIT),),
    "maxvit_base": (
        _timm("in1k", "maxvit_base_tf_224.in1k", 84.95, _MAXVIT),
        _timm("in21k", "maxvit_base_tf_224.in21k"),
    ),
    "maxvit_base_384": (
        _timm("in1k", "maxvit_base_tf_384.in1k", 86.34, _MAXVIT),
        _timm("in21k_ft_in1k", "maxvit_base_tf_384.in21k_ft_in1k"),
    ),
    "maxvit_large": (
        _timm("in1k", "maxvit_large_tf_224.in1k", 85.17, _MAXVIT),
        _timm("in21k", "maxvit_large_tf_224.in21k"),
    ),
    "maxvit_large_384": (
        _timm("in1k", "maxvit_large_tf_384.in1k", 86.4, _MAXVIT),
        _timm("in21k_ft_in1k", "maxvit_large_tf_384.in21k_ft_in1k"),
    ),
    "maxvit_xlarge": (_timm("in21k", "maxvit_xlarge_tf_224.in21k"),),
    "maxvit_xlarge_384": (_timm("in21k_ft_in1k", "maxvit_xlarge_tf_384.in21k_ft_in1k"),),
    # HaloNet: timm-trained weights of timm's variants (the paper's H0-H7 were never released)
    "halonet26t": (_timm("a1h_in1k", "halonet26t.a1h_in1k"),),
    "sehalonet33ts": (_timm("ra2_in1k", "sehalonet33ts.ra2_in1k"),),
    "halonet50ts": (_timm("a1h_in1k", "halonet50ts.a1h_in1k"),),
    "eca_halonext26ts": (_timm("c1_in1k", "eca_halonext26ts.c1_in1k"),),
    # SE-ResNet(X): Cadene's / timm's ports of the SENet release, as timm's legacy_* tags
    **{
        n: (_timm("in1k", f"legacy_{n.replace('se_', 'se')}.in1k", top1, _SENET),)
        for n, top1 in (
            ("se_resnet50", 77.63),
            ("se_resnet101", 78.25),
            ("se_resnet152", 78.66),
            ("se_resnext50_32x4d", 79.03),
            ("se_resnext101_32x4d", 80.19),
        )
    },
    # ECA-Net / CBAM: cloud shares only
    **{
        f"eca_resnet{d}": (_cloud("in1k", link, top1, "mit", _ECA),)
        for d, link, top1 in [
            (18, "https://drive.google.com/open?id=1LMRFRTyzVifGBi2MUpTuYEWW44S8mwyl", 70.92),
            (34, "https://drive.google.com/open?id=15LV5Jkea3GPzvLP5__H7Gg88oNQUxBDE", 74.21),
            (50, "https://drive.google.com/open?id=1670rce333c_lyMWFzBlNZoVUvtxbCF_U", 77.42),
            (101, "https://drive.google.com/open?id=1b5FQ8yDFnZ_UhvWT9txmjI_LjbKkgnvC", 78.65),
            (152, "https://drive.google.com/open?id=1_bYnaOg9ptsILC_iC7uQ5Izv-u2rjYG5", 78.92),
        ]
    },
    "eca_mobilenet_v2": (
        _cloud("in1k", "https://drive.google.com/open?id=1FxzeXPg1SJQZzVVH4HRjMeq_SVMfidUm", 72.56, "mit", _ECA),
    ),
    "cbam_resnet50": (
        _cloud(
            "in1k",
            "https://drive.google.com/file/d/1mvAVvhLR_2XY_bPYxh-SEz4vDmGzSArO/view",
            77.622,
            "mit",
            "Jongchan/attention-module README @ 459efad (Google Drive, 100-epoch ResNet50+CBAM; MIT license)",
        ),
    ),
    # BiFormer: OneDrive shares
    **{
        f"biformer_{n}": (
            _cloud("in1k", f"https://api.onedrive.com/v1.0/shares/s!{share}/root/content", top1, "mit", _BIFORMER),
        )
        for n, share, top1 in [
            ("tiny", "AkBbczdRlZvChHEOoGkgwgQzEDlM", 81.4),
            ("small", "AkBbczdRlZvChHDyM-x9KWRBZ832", 83.8),
            ("base", "AkBbczdRlZvChHI_XPhoadjaNxtO", 84.3),
            ("stl", "AkBbczdRlZvChSf-m7ujkvx9lIQ1", 82.7),
        ]
    },
    # Agent / FLatten: Tsinghua Cloud shares
    **{
        n: (_cloud("in1k", f"https://cloud.tsinghua.edu.cn/f/{share}/?dl=1", top1, "unknown", _AGENT),)
        for n, share, top1 in [
            ("agent_pvt_tiny", "13fdf0e0a7c5498c934f", 78.4),
            ("agent_pvt_small", "36b8be9a8863456685a3", 82.2),
            ("agent_pvt_medium", "4d00ecacf18b45f9b88c", 83.4),
            ("agent_pvt_medium_256", "654df734121643b19c52", 83.8),
            ("agent_pvt_large", "040cfe0cfbbe4762ad09", 83.7),
            ("agent_swin_tiny", "a2ddc1190c224f768a41", 82.6),
            ("agent_swin_small", "f607172c9fea4d6e99bb", 83.7),
            ("agent_swin_small_288", "09760394e93b4046a25e", 84.1),
            ("agent_swin_base", "4fcd2d0114bb490483c3", 84.0),
            ("agent_swin_base_384", "bb84ee9058954706a557", 84.9),
            ("agent_deit_tiny", "57e0904221824ee7b7af", 74.9),
            ("agent_deit_small", "fdd43304372541db8ea7", 80.5),
            ("agent_deit_small_448", "a228f86241c445f1969b", 83.1),
            ("agent_deit_base", "5115f15fdd7e4ab58fbc", 82.0),
            ("agent_cswin_tiny", "8c562a74441e46d5902b", 83.1),
            ("agent_cswin_small", "30eb8af675bc4b7a8747", 83.9),
            ("agent_cswin_base", "c8035b0839b2410c8c9f", 84.7),
            ("agent_cswin_base_384", "1239be0df44b47719432", 85.8),
        ]
    },
    **{
        n: (_cloud("in1k", f"https://cloud.tsinghua.edu.cn/f/{share}/?dl=1", top1, "unknown", _FLATTEN),)
        for n, share, top1 in [
            ("flatten_pvt_tiny", "3ab1d773f19d45648690", 77.8),
            ("flatten_pvt_v2_b0", "5d1f01532b104da28e7b", 71.1),
            ("flatten_swin_tiny", "e1518e76703e4e57a7f2", 82.1),
            ("flatten_swin_small", "94188e52af354bf4a88b", 83.5),
            ("flatten_swin_base", "7a9e5186bad04e7fb3a9", 83.8),
            ("flatten_swin_base_384", "0d0330cf2e5249f1abb6", 85.0),
            ("flatten_cswin_tiny", "48ba765ba8b0451d9d5a", 83.1),
        ]
    },
}

_NOTE = "Weights: {where} ({layout} layout), converted on load by visionzoo's {family} checkpoint converter."


def _timm_cfg(timm_tag: str) -> dict:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_tag)
    if cfg is None:
        raise ValueError(f"_pretrained_sources: timm has no pretrained tag {timm_tag!r}")
    return cfg.to_dict()


_TIMM_FIELDS = (
    "hf_hub_id",
    "hf_hub_filename",
    "url",
    "input_size",
    "test_input_size",
    "crop_pct",
    "test_crop_pct",
    "crop_mode",
    "interpolation",
    "mean",
    "std",
    "num_classes",
    "license",
    "label_names",
)


def _cfg(base: dict, family: str, src: Source) -> dict:
    cfg = dict(base, **src.data)
    if src.kind == "timm":
        cfg.update({k: v for k, v in _timm_cfg(src.location).items() if k in _TIMM_FIELDS and v not in (None, "")})
        where = f"timm {src.location} ({cfg.get('hf_hub_id') or cfg.get('url')})"
    elif src.kind == "hf-hub":
        cfg.update(hf_hub_id=src.location, hf_hub_filename=src.filename)
        where = f"https://huggingface.co/{src.location} {src.filename}"
    elif src.kind == "url":
        cfg.update(url=src.location)
        where = src.location
    else:
        where = f"{src.location} (cloud share: download it, then pass checkpoint_path=)"
    if src.license:
        cfg["license"] = src.license
    cfg["notes"] = (_NOTE.format(where=where, layout=src.layout, family=family), f"Evidence: {src.evidence}")
    return cfg


def tag_cfgs(name: str, family: str, base: dict, default_tag: str) -> dict[str, dict]:
    """timm pretrained cfgs of registered model ``name`` by tag, the default tag first. A model with no
    released weights keeps the family's single tag and cfg; so does the default when no released
    checkpoint has the family's class count (``maxvit_xlarge``: ImageNet-21k only), so that
    ``create_model(name)`` keeps its 1000-class head and ``name.in21k`` is asked for by tag."""
    cfgs = {s.tag: _cfg(base, family, s) for s in SOURCES.get(name, ())}
    if all(c["num_classes"] != base["num_classes"] for c in cfgs.values()):
        cfgs = {default_tag: base, **cfgs}
    return cfgs


def source(name: str, tag: str | None = None) -> Source | None:
    """The recorded source of ``name.tag`` (the registered default tag when ``tag`` is None), or None."""
    if tag is None:
        from ._registry import MODELS

        tag = MODELS[name].tag if name in MODELS else None
    return next((s for s in SOURCES.get(name, ()) if tag is None or s.tag == tag), None)


def unavailable_message(name: str, tag: str | None = None) -> str | None:
    """Why ``create_model(name.tag, pretrained=True)`` cannot download (None when it can)."""
    src = source(name, tag)
    call = f"create_model({name!r}, checkpoint_path='downloaded_file.pth')"
    if src is None:
        others = [
            f"create_model('{name}.{s.tag}', pretrained=True)" for s in SOURCES.get(name, ()) if s.kind != "cloud"
        ]
        also = f" Released weights of other tags: {', '.join(others)}." if others else ""
        return (
            f"no released weights are known for {name!r}{f' tag {tag!r}' if tag else ''}.{also} Load weights with "
            f"{call}, create_model('local-dir:/path/to/export'), or create_model('hf-hub:org/repo')."
        )
    if src.kind == "cloud":
        return (
            f"the weights of {name}.{src.tag} are only on a cloud share that needs a browser: {src.location} "
            f"(source: {src.evidence}). Download the file there, then load it with {call}."
        )
    return None


def pretrained_summary(name: str) -> str:
    """One line for tables and model cards: ``tag: where (layout)`` per recorded source, ``–`` if none."""
    parts = []
    for s in SOURCES.get(name, ()):
        where = {
            "hf-hub": f"hf {s.location}",
            "timm": f"timm {s.location}",
            "url": "release URL",
            "cloud": "cloud share",
        }
        parts.append(f"{s.tag}: {where[s.kind]} ({s.layout})")
    return "; ".join(parts) or "–"


def hub_facts(name: str) -> dict[str, dict]:
    """Per tag, what ``hub_configs/<name>/config.json`` records about the released weights."""
    return {
        s.tag: {
            "kind": s.kind,
            "location": s.location,
            "file": s.filename or None,
            "layout": s.layout,
            "top1": s.top1,
            "license": s.license or None,
            "evidence": s.evidence,
        }
        for s in SOURCES.get(name, ())
    }


def card_weights(name: str) -> tuple[str, str]:
    """(a model card sentence on the weights, the card's load line) for registered model ``name``."""
    sources = SOURCES.get(name, ())
    if any(s.kind != "cloud" for s in sources):
        tags = ", ".join(f"`{name}.{s.tag}`" for s in sources if s.kind != "cloud")
        sentence = (
            f"Released weights ({pretrained_summary(name)}) are downloaded and converted by "
            f"`visionzoo.create_model('{name}', pretrained=True)` (tags: {tags})."
        )
        return sentence, f"model = visionzoo.create_model('{name}', pretrained=True).eval()"
    where = f" from {sources[0].location}" if sources else ""
    sentence = (
        f"Weights are not hosted here: download the official checkpoint{where} and load it with "
        f"`visionzoo.create_model('{name}', checkpoint_path=...)`."
    )
    return sentence, f"model = visionzoo.create_model('{name}', checkpoint_path='official_checkpoint.pth').eval()"
