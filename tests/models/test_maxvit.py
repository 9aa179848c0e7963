"""MaxViT: timm-weight parity (TF ports), table resizing, backends, any input size."""
import pytest
import timm
import torch

import visionzoo
from visionzoo.blocks.multi_axis_attn import PartitionAttn2d
from visionzoo.models import maxvit
from visionzoo.models._registry import MODELS

from ._any_size import check_train_and_eval

NAMES = [n for n in visionzoo.list_models() if MODELS[n].family == "maxvit"]
SMALL = dict(widths=(32, 32, 64, 64), depths=(1, 2, 1, 1), stem_width=16, window=4)
TIMM_SMALL = dict(embed_dim=(32, 32, 64, 64), depths=(1, 2, 1, 1), stem_width=16, head_hidden_size=64)


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Norm parameters / statistics and bias tables redrawn, so no branch is trivial."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("relative_position_bias_table"):
                t.copy_(torch.randn(t.shape, generator=g))
            elif t.dim() == 1 and t.is_floating_point() and ("norm" in name):
                if name.endswith("running_var"):
                    t.copy_(0.5 + torch.rand(t.shape, generator=g))
                elif name.endswith("weight"):
                    t.copy_(0.5 + 0.5 * torch.rand(t.shape, generator=g))
                else:
                    t.copy_(0.1 * torch.randn(t.shape, generator=g))
    return model


def _pair(tmp_path, timm_name, ours_name, timm_kw=None, ours_kw=None):
    torch.manual_seed(0)
    theirs = _perturb(timm.create_model(timm_name, **(timm_kw or {}))).eval()
    torch.save(theirs.state_dict(), tmp_path / "timm.pth")
    ours = visionzoo.create_model(ours_name, checkpoint_path=tmp_path / "timm.pth", **(ours_kw or {})).eval()
    return theirs, ours


def _assert_same(theirs, ours, x):
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=1e-4)
        taps = theirs.forward_intermediates(x, intermediates_only=True)[1:]  # timm also taps the stem
        for got, want in zip(ours.forward_intermediates(x, intermediates_only=True), taps, strict=True):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_timm_weights_give_timm_outputs_reduced(tmp_path):
    theirs, ours = _pair(tmp_path, "maxvit_tiny_tf_224", "maxvit_tiny", dict(TIMM_SMALL, img_size=128), SMALL)
    _assert_same(theirs, ours, torch.randn(2, 3, 128, 128))


def test_timm_weights_give_timm_outputs_maxvit_tiny(tmp_path):
    theirs, ours = _pair(tmp_path, "maxvit_tiny_tf_224", "maxvit_tiny")
    _assert_same(theirs, ours, torch.randn(1, 3, 224, 224))


@pytest.mark.extended
@pytest.mark.parametrize("name", ["maxvit_tiny_384", "maxvit_tiny_512", "maxvit_small", "maxvit_base_384"])
def test_timm_weights_give_timm_outputs_full_size(name, tmp_path):
    size, res = (name.split("_")[1:] + ["224"])[:2]
    theirs, ours = _pair(tmp_path, f"maxvit_{size}_tf_{res}", name)
    _assert_same(theirs, ours, torch.randn(1, 3, int(res), int(res)))


def test_other_window_checkpoint_is_resized_like_timm(tmp_path):
    """A 224 checkpoint (window 7) into a window-12 model: tables resized as timm resizes them."""
    torch.manual_seed(0)
    src = _perturb(timm.create_model("maxvit_tiny_tf_224", **TIMM_SMALL))
    torch.save(src.state_dict(), tmp_path / "w7.pth")
    ours = visionzoo.create_model("maxvit_tiny", checkpoint_path=tmp_path / "w7.pth", **dict(SMALL, window=12))
    theirs = timm.create_model("maxvit_tiny_tf_384", **TIMM_SMALL)
    theirs.load_state_dict(timm.models.maxxvit.checkpoint_filter_fn(src.state_dict(), theirs))
    key = "stages.1.blocks.0.attn_grid.attn.rel_pos.relative_position_bias_table"
    assert ours.state_dict()[key].shape == (1, 23, 23)
    torch.testing.assert_close(ours.state_dict()[key], theirs.state_dict()[key])


def test_partitions_are_neighborhood_attention():
    """Block and grid attention equal timm's partition + dense attention on divisible maps."""
    torch.manual_seed(0)
    for partition in ("block", "grid"):
        ours = PartitionAttn2d(64, 32, partition, 4)
        theirs = timm.models.maxxvit.PartitionAttentionCl(
            64, partition, timm.models.maxxvit.MaxxVitTransformerCfg(
                window_size=(4, 4), grid_size=(4, 4), head_first=False, rel_pos_type="bias_tf"))
        theirs.attn.load_state_dict({k: v for k, v in _perturb(ours).state_dict().items()})
        x = torch.randn(2, 12, 8, 64)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs._partition_attn(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(64, 64), (70, 50)])
def test_backends_agree(size):
    model = _perturb(visionzoo.create_model("maxvit_tiny", num_classes=5, **SMALL)).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        outs = {}
        for backend in ("reference", "cpu"):
            with visionzoo.use_backend(backend):
                outs[backend] = model(x)
    torch.testing.assert_close(outs["cpu"], outs["reference"], atol=1e-5, rtol=1e-5)


def test_any_input_size_train_and_eval():
    model = visionzoo.create_model("maxvit_tiny", num_classes=5, drop_path_rate=0.1, **SMALL)
    check_train_and_eval(model, [(32, 32), (200, 232), (256, 256), (97, 131)], batch=2)
    taps = model.eval().forward_intermediates(torch.randn(1, 3, 70, 50), intermediates_only=True)
    assert all(t.is_contiguous() for t in taps)


def test_padding_is_masked():
    """Rows added by the model's own padding never reach real tokens: a map that needs padding gives,
    on its real region, what the same attention gives when that padding is explicit zero rows."""
    attn = _perturb(PartitionAttn2d(64, 32, "block", 4)).eval()
    x = torch.randn(1, 10, 7, 64)
    with torch.no_grad():
        got = attn(x)
        padded = torch.nn.functional.pad(x, (0, 0, 0, 1, 0, 2))
        q, k, v = attn.qkv(padded).view(1, 12, 8, 3, 2, 32).unbind(3)
        ref = visionzoo.ops.neighborhood.na2d(q, k, v, 4, stride=4, rpb=attn.rel_pos.table, backend="reference",
                                              valid=(10, 7))
        torch.testing.assert_close(got, attn.proj(ref.reshape(1, 12, 8, 64))[:, :10, :7], atol=1e-5, rtol=1e-5)


def test_config_errors():
    with pytest.raises(ValueError, match="multiples of head_dim"):
        visionzoo.create_model("maxvit_tiny", widths=(48, 64, 128, 256), device="meta")
    with pytest.raises(ValueError, match="differ in length"):
        visionzoo.create_model("maxvit_tiny", depths=(1, 1), device="meta")
    assert maxvit.VARIANTS["maxvit_tiny_512"].window == 16
