"""The hierarchical builder: a family declared as a config over it (the CONTRIBUTING example), the
token-mixer / MLP / stem / downsample tables and their errors."""
import dataclasses
from dataclasses import dataclass

import pytest
import torch

from visionzoo.blocks import DWConvMlp, NeighborhoodAttn2d, create_token_mixer
from visionzoo.models._hierarchical import BlockCfg, HierarchicalCfg, HierarchicalNet, MixerCfg, StageCfg, StemCfg

from ._any_size import check_train_and_eval


@dataclass(frozen=True)
class ToyCfg:
    """A PVTv2-like family in a few lines: patch stem, Swin merging, NA mixers, DW-conv MLPs."""
    depths: tuple[int, ...] = (1, 2, 1, 1)
    widths: tuple[int, ...] = (16, 32, 32, 64)
    num_heads: tuple[int, ...] = (1, 2, 2, 4)
    mlp_ratio: float = 2.0

    def arch(self) -> HierarchicalCfg:
        return HierarchicalCfg(
            tuple(StageCfg(d, w, h, MixerCfg("na", dict(kernel_size=3), cycle=dict(dilation=(1, 2))),
                           BlockCfg(self.mlp_ratio, mlp_layer="dwconv_mlp"))
                  for d, w, h in zip(self.depths, self.widths, self.num_heads)),
            stem=StemCfg("patch", 4), downsample="merge")


def test_family_declared_over_the_builder():
    model = HierarchicalNet(ToyCfg(), num_classes=5, drop_path_rate=0.1)
    assert model.cfg == ToyCfg() and [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    assert isinstance(model.stages[1].blocks[0].mlp, DWConvMlp)
    assert [b.attn.dilation for b in model.stages[1].blocks] == [(1, 1), (2, 2)]  # the cycle
    check_train_and_eval(model, [(32, 32), (45, 61)], batch=2)


def test_hierarchical_cfg_directly_and_isotropic():
    arch = HierarchicalCfg((StageCfg(1, 32, 2, MixerCfg("global_rpb", dict(table_size=4))),) * 3,
                           stem=StemCfg("patch", 8), downsample="none", final_norm="batchnorm")
    model = HierarchicalNet(arch, num_classes=3)
    assert arch.reductions == (8, 8, 8) and model.cfg is arch
    check_train_and_eval(model, [(40, 24)], batch=2)
    assert dataclasses.replace(arch, downsample="conv_ln").reductions == (8, 16, 32)


@pytest.mark.parametrize("make,match", [
    (lambda: StemCfg("nat", 8), "stride 4"),
    (lambda: StemCfg("bogus"), "unknown kind"),
    (lambda: MixerCfg("bogus"), "unknown kind"),
    (lambda: BlockCfg(mlp_layer="bogus"), "unknown kind"),
    (lambda: HierarchicalCfg((StageCfg(1, 8, 1),), downsample="bogus"), "unknown kind"),
    (lambda: create_token_mixer("global_lepe", 8, 1, proj_drop=0.1), "takes no proj_drop"),
])
def test_table_errors_name_the_choices(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_token_mixer_table_passes_runtime_arguments():
    attn = create_token_mixer("na", 16, 2, kernel_size=3, dilation=2, backend="reference")
    assert isinstance(attn, NeighborhoodAttn2d) and attn.backend == "reference" and attn.dilation == (2, 2)
    with pytest.raises(TypeError):
        create_token_mixer("na", 16, 2, kernel_size=3, not_an_option=1)


def test_dwconv_mlp_mixes_neighbouring_tokens():
    mlp = DWConvMlp(8, 16)
    x = torch.zeros(1, 5, 5, 8, requires_grad=True)
    mlp(x)[0, 2, 2].sum().backward()
    touched = (x.grad.abs().sum(-1)[0] > 0).nonzero().tolist()
    assert sorted(touched) == [[i, j] for i in (1, 2, 3) for j in (1, 2, 3)]


def test_mlp_only_blocks_stage_norms_and_new_rows():
    """'none' mixer (MLP-only blocks, no norm1), BatchNorm pre-norms, a norm closing each stage (its taps are
    normed; grad checkpointing keeps it), no final norm; the VAN stem and the LITv2 DTM rows."""
    mlp_only = StageCfg(1, 16, 1, MixerCfg("none"), BlockCfg(2.0, "dwconv_mlp"))
    lka = StageCfg(1, 32, 1, MixerCfg("lka"), BlockCfg(2.0, "dwconv_mlp", 1e-2, norm="batchnorm"))
    arch = HierarchicalCfg((mlp_only, lka), StemCfg("overlap_bn"), "dtm", final_norm="none",
                           stage_norm="layernorm", stage_norm_eps=1e-6)
    model = HierarchicalNet(arch, num_classes=3)
    blk = model.stages[0].blocks[0]
    assert blk.attn is None and blk.norm1 is None and not any(k.startswith(("norm1", "ls1")) for k in blk.state_dict())
    assert [s.norm.eps for s in model.stages] == [1e-6, 1e-6] and isinstance(model.norm, torch.nn.Identity)
    assert set(model.stages[1].downsample.state_dict()) >= {"dconv.weight", "dconv.conv_offset.weight", "norm.weight"}
    check_train_and_eval(model, [(37, 29)], batch=2)
    model.eval()
    x = torch.randn(1, 3, 37, 29)
    with torch.no_grad():
        tap = model.forward_intermediates(x, indices=[0], intermediates_only=True)[0]
        raw = model.stages[0].blocks(model.stages[0].downsample(model.stem(x)))
        torch.testing.assert_close(tap, model.stages[0].norm(raw).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="unknown kind"):
        HierarchicalCfg((mlp_only,), stage_norm="groupnorm")
    with pytest.raises(ValueError, match="unknown kind"):
        BlockCfg(norm="groupnorm")
    with pytest.raises(ValueError, match="takes no options"):
        create_token_mixer("none", 16, 1, window_size=2)


def test_pvt_rows_pos_embed_and_per_block_mixers():
    """PVT v1 / v2 rows (patch / overlap ConvLN stems and downsamplers, a per-stage absolute position
    embedding resampled to other maps, the unapplied final norm) and a stage whose blocks have different
    mixers (Agent-Swin's 'M<k>' stages)."""
    swin = MixerCfg("swin", dict(window_size=3), cycle=dict(shift=(False, True)))
    mixed = (MixerCfg("none"), swin, swin)
    v1 = HierarchicalCfg((StageCfg(1, 16, 1, swin, pos_embed=(8, 8)), StageCfg(3, 32, 2, mixed, pos_embed=(4, 4))),
                         StemCfg("patch", 4), "patch_ln", final_norm="layernorm_unapplied")
    model = HierarchicalNet(v1, num_classes=3)
    assert [type(b.attn).__name__ if b.attn is not None else None for b in model.stages[1].blocks] == \
        [None, "SwinWindowAttn", "SwinWindowAttn"]
    assert [b.attn.shift for b in model.stages[1].blocks[1:]] == [True, False]  # block 1 shifts, block 2 not
    assert model.stages[0].pos_embed.shape == (1, 64, 16) and model.stages[1].pos_embed.shape == (1, 16, 32)
    assert set(model.stages[1].downsample.state_dict()) == {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
    assert "norm.weight" in model.state_dict()
    check_train_and_eval(model, [(32, 32), (45, 61)], batch=2)
    model.eval()
    x = torch.randn(2, 3, 45, 61)  # a 12 x 16 stage-0 map: the 8 x 8 embedding is resampled
    with torch.no_grad():
        feats = model.forward_features(x)
        by_hand = model.stem(x)
        pos = torch.nn.functional.interpolate(model.stages[0].pos_embed.reshape(1, 8, 8, 16).permute(0, 3, 1, 2),
                                              size=by_hand.shape[1:3], mode="bilinear", align_corners=False)
        by_hand = model.stages[0].blocks(by_hand + pos.permute(0, 2, 3, 1))
        by_hand = model.stages[1](by_hand)
    torch.testing.assert_close(feats, by_hand.permute(0, 3, 1, 2))  # the final norm is not applied
    v2 = HierarchicalCfg((StageCfg(1, 16, 1, swin), StageCfg(1, 32, 2, swin)), StemCfg("overlap_ln"), "overlap_ln",
                         stage_norm="layernorm", stage_norm_eps=1e-6)
    model = HierarchicalNet(v2, num_classes=3)
    assert model.stem.proj.kernel_size == (7, 7) and model.stages[1].downsample.proj.kernel_size == (3, 3)
    check_train_and_eval(model, [(33, 47)], batch=2)
    with pytest.raises(ValueError, match="one MixerCfg per block"):
        StageCfg(2, 16, 1, (swin,))
    with pytest.raises(ValueError, match="pos_embed"):
        StageCfg(1, 16, 1, pos_embed=(0, 4))
