"""``torch.jit.script`` (issue 21 A): every family scripts (the families whose timm counterparts script:
attention ResNets, SHViT, HaloNet, MaxViT; and every other family in ``SCRIPTS``), compiles and matches
eager, in eval and train mode, on maps that are and are not multiples of the attention windows. A family
that stops scripting belongs in ``NO_SCRIPT`` (empty now) with why, and must still raise, so the README's
list cannot drift.

Scripted models compile the plain modules only: the fused eval path is a static ``if not
torch.jit.is_scripting()`` branch, and the attention blocks call the ops' TorchScript-compatible references
(``halo_padded``, ``na2d_padded``, ``bra_padded``: the front doors' pad / mask / crop, and bra's routing;
``na2d_reference``, ``linear_attn_reference``, ``agent_attn_reference``) instead of the front doors (Python
argument handling and backend dispatch). Eager inference still takes the fused path and the cpu backends:
outputs agree to float rounding.
"""
import subprocess
import sys

import pytest
import torch
from torch import nn

import visionzoo
from tests.models import _deploy as deploy
from tests.models import create_tiny
from visionzoo.blocks.cswin_attn import CrossShapedWindowAttn
from visionzoo.blocks.halo_attn import HaloAttn2d
from visionzoo.blocks.hilo_attn import HiLoAttn
from visionzoo.blocks.multi_axis_attn import PartitionAttn2d
from visionzoo.blocks.neighborhood_attn import NeighborhoodAttn2d
from visionzoo.blocks.routing_attn import BiLevelRoutingAttn, GlobalAttnLePE
from visionzoo.models._registry import MODELS
from visionzoo.ops.halo import halo_attn
from visionzoo.ops.halo.reference import halo_padded
from visionzoo.ops.neighborhood import na2d
from visionzoo.ops.neighborhood.reference import na2d_padded
from visionzoo.ops.routing import bra, bra_routing
from visionzoo.ops.routing.reference import bra_padded, bra_route

REPS = deploy.representatives()
#: families that torch.jit.script (timm's HaloNet, MaxViT, SE/ECA ResNets and SHViT script too)
SCRIPTS = ["ca_resnet", "single_head_vit", "eca_mobilenetv2", "halonet", "maxvit", "nat", "nat_isotropic", "dinat_s",
           "van", "flatten_pvt", "flatten_pvt_v2", "flatten_cswin", "agent_pvt", "agent_cswin",
           "litv2", "agent_deit", "agent_swin", "flatten_swin", "biformer"]
#: family -> why torch.jit.script raises: the first construct TorchScript rejects (probed), then what follows
NO_SCRIPT: dict[str, str] = {}
#: a window-multiple map and one that is not (the attention pads and masks it)
SIZES = [(64, 64), (72, 88)]


def _awake(model: nn.Module) -> nn.Module:
    """Norm weights / statistics redrawn and zero-initialised parameters (timm's zero_init_last, bias
    tables) filled, so every residual branch, the attention included, reaches the output."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_var is not None:
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        for p in model.parameters():
            if p.dim() == 1 and p.numel() > 1 and bool((p == 1).all()):
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=g))
            elif not p.any():
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def _check_scripted(name: str, sizes=SIZES, tiny: bool = True, dtype: torch.dtype = torch.float32) -> None:
    torch.manual_seed(0)
    model = _awake(create_tiny(name, num_classes=5) if tiny else visionzoo.create_model(name)).to(dtype)
    scripted = torch.jit.script(model.eval())
    g = torch.Generator().manual_seed(1)
    for hw in sizes:
        x = torch.randn(2, 3, *hw, generator=g, dtype=dtype)
        with torch.no_grad():  # eval: eager takes the fused path where it has one
            torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5, msg=f"{name} eval {hw}")
        model.train(), scripted.train()  # train: batch statistics, autograd through both graphs (shared parameters)
        xs, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_s, out_e = scripted(xs), model(xe)
        torch.testing.assert_close(out_s, out_e, rtol=1e-5, atol=1e-5, msg=f"{name} train {hw}")
        out_s.square().sum().backward()
        out_e.square().sum().backward()
        torch.testing.assert_close(xs.grad, xe.grad, rtol=1e-5, atol=1e-5, msg=f"{name} train input grad {hw}")
        model.eval(), scripted.eval()


@pytest.mark.parametrize("family", SCRIPTS)
def test_family_scripts(family):
    """The family's representative (reduced config) scripts and matches eager at both sizes."""
    _check_scripted(REPS[family])


_OTHERS = [pytest.param(n, marks=pytest.mark.extended, id=n)
           for n, e in MODELS.items() if e.family in SCRIPTS and REPS[e.family] != n]


@pytest.mark.parametrize("name", _OTHERS)
def test_every_model_scripts(name):
    """Every other registered model of the scripting families (extended: a compile per model)."""
    _check_scripted(name)


@pytest.mark.extended
@pytest.mark.parametrize("name", ["halonet_h0", "eca_halonext26ts", "maxvit_tiny", "biformer_tiny"])
def test_full_size_scripts(name):
    """Full-size models (MaxViT's 7x7 windows, BiFormer's 7x7 regions routed top-1/4/16: 224 and a 200 x 232
    map that pads every stage's partitions / regions; extended: ~1 min each on 2 cores). In float64: through
    a full-depth network in train mode (batch statistics of 2 images) float32 rounding of the reference vs
    the kernels grows to ~4e-3 of the largest input gradient (halonet_h0: 3.2e-4 of 0.084), while in float64
    they agree to 1e-14."""
    _check_scripted(name, sizes=[(224, 224), (200, 232)], tiny=False, dtype=torch.float64)


@pytest.mark.parametrize("family", SCRIPTS)
def test_family_fx_graph_scripts(family):
    """timm's ``test_model_forward_fx_torchscript`` in our suite: the FX graph of the whole model (timm's leaf
    modules and functions kept as calls) scripts and matches eager; a shape helper traced into the graph as a
    plain function call (not scriptable) fails here."""
    from timm.models import create_feature_extractor
    from timm.models._features_fx import get_graph_node_names
    model = _awake(create_tiny(REPS[family], num_classes=5)).eval()
    last = get_graph_node_names(model)[1][-1]
    scripted = torch.jit.script(create_feature_extractor(model, return_nodes=[last]))
    x = torch.randn(2, 3, 72, 88)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x)[last], model(x), rtol=1e-4, atol=1e-5)


# ---- the blocks and the ops' scriptable references ------------------------------------------------
@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (3, 13), (13, 5)])
@pytest.mark.parametrize("partition", ["block", "grid"])
def test_partition_attention_scripts(partition, hw):
    """MaxViT's block / grid attention on maps smaller than, equal to and not a multiple of the window."""
    attn = PartitionAttn2d(32, 8, partition, 4).eval()
    scripted = torch.jit.script(attn)
    x = torch.randn(2, *hw, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), attn(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (3, 13), (2, 2), (19, 11)])
@pytest.mark.parametrize("kernel,dilation", [(3, 1), (3, (4, 2)), ((3, 5), 3)])
def test_neighborhood_attention_scripts(kernel, dilation, hw):
    """NAT / DiNAT's attention: the per-axis dilation clamped to the map (maps smaller than the kernel,
    than ``kernel * dilation``, and not multiples of the dilation), rectangular windows."""
    torch.manual_seed(0)
    attn = NeighborhoodAttn2d(16, 2, kernel, dilation).eval()
    scripted = torch.jit.script(attn)
    x = torch.randn(2, *hw, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), attn(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(6, 6), (7, 9), (1, 3)])
@pytest.mark.parametrize("window,alpha", [(2, 0.5), (3, 0.0), (2, 1.0), (1, 0.5)])
def test_hilo_attention_scripts(window, alpha, hw):
    """LITv2's HiLo: both head groups, Hi-Fi or Lo-Fi alone, plain attention (window 1); padded windows."""
    torch.manual_seed(0)
    attn = HiLoAttn(16, 4, window_size=window, alpha=alpha).eval()
    scripted = torch.jit.script(attn)
    x = torch.randn(2, *hw, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), attn(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(6, 6), (7, 9), (2, 11), (1, 1)])
@pytest.mark.parametrize("global_attn", [False, True])
def test_cswin_attention_scripts(global_attn, hw):
    """CSWin's stripes (and global window) with LePE: whole stripes, padded ones, stripes wider than the map."""
    torch.manual_seed(0)
    attn = CrossShapedWindowAttn(16, 4, split_size=3, global_attn=global_attn).eval()
    scripted = torch.jit.script(attn)
    x = torch.randn(2, *hw, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), attn(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (3, 13)])
@pytest.mark.parametrize("stride", [1, 2])
def test_halo_attention_scripts(stride, hw):
    """HaloNet's attention (strided too) on maps that are and are not multiples of the block."""
    attn = HaloAttn2d(16, 16, stride=stride, num_heads=2, block_size=4, halo_size=1).eval()
    with torch.no_grad():
        for t in (attn.pos_embed.height_rel, attn.pos_embed.width_rel):
            t.normal_()
    scripted = torch.jit.script(attn)
    x = torch.randn(2, 16, *hw)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), attn(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw,kernel,grid", [((7, 9), 4, False), ((7, 9), 4, True), ((5, 11), 3, True),
                                            ((8, 8), 4, True), ((2, 3), 4, False)])
def test_na2d_padded_is_the_front_door(hw, kernel, grid):
    """``na2d_padded`` scripted equals ``na2d(pad=True)`` (every backend is tested against the reference)."""
    H, W = hw
    q, k, v = torch.randn(3, 2, H, W, 2, 8).unbind(0)
    rpb = torch.randn(2, 2 * kernel - 1, 2 * kernel - 1)
    dil = [-(-H // kernel), -(-W // kernel)] if grid else [1, 1]
    want = na2d(q, k, v, kernel, dil, stride=kernel, rpb=rpb, scale=0.3, pad=True)
    got = torch.jit.script(na2d_padded)(q, k, v, [kernel, kernel], dil, [kernel, kernel], rpb, 0.3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw,block,halo,stride,rel", [((7, 9), 4, 1, 1, True), ((8, 8), 4, 1, 2, True),
                                                      ((5, 11), 4, 2, 2, False), ((13, 6), 3, 1, 1, True)])
def test_halo_padded_is_the_front_door(hw, block, halo, stride, rel):
    """``halo_padded`` scripted equals ``halo_attn``."""
    H, W = hw
    k, v = torch.randn(2, H, W, 2, 8), torch.randn(2, H, W, 2, 6)
    q = torch.randn(2, -(-H // stride), -(-W // stride), 2, 8)
    win = block + 2 * halo
    rh, rw = (torch.randn(2 * win - 1, 8), torch.randn(2 * win - 1, 8)) if rel else (None, None)
    want = halo_attn(q, k, v, block, halo, rh, rw, stride=stride, scale=0.3)
    got = torch.jit.script(halo_padded)(q, k, v, block, halo, rh, rw, stride, 0.3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(14, 14), (9, 12), (3, 5), (1, 1), (15, 8)])
@pytest.mark.parametrize("n_win,topk", [(7, 4), (7, 16), (3, 1), (2, 9)])
def test_biformer_routing_attention_scripts(n_win, topk, hw):
    """BiFormer's routing attention with LePE: whole regions, padded ones, maps smaller than ``n_win``
    (regions of padding only), sparse and dense routing (the cpu backend's two paths), topk > n^2."""
    torch.manual_seed(0)
    attn = BiLevelRoutingAttn(16, 2, n_win=n_win, topk=topk, side_dwconv=3).eval()
    scripted = torch.jit.script(attn)
    x = torch.randn(2, *hw, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), attn(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(6, 6), (3, 5)])
@pytest.mark.parametrize("side_dwconv", [5, 0])
def test_biformer_global_attention_scripts(side_dwconv, hw):
    """BiFormer's last-stage global attention, with and without LePE."""
    torch.manual_seed(0)
    attn = GlobalAttnLePE(16, 4, side_dwconv=side_dwconv).eval()
    scripted = torch.jit.script(attn)
    x = torch.randn(2, *hw, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), attn(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw,n_win,topk", [((14, 14), 7, 4), ((9, 12), 7, 16), ((5, 3), 2, 3), ((1, 2), 3, 2),
                                           ((8, 11), 3, 1)])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bra_padded_is_the_front_door(backend, hw, n_win, topk):
    """``bra_padded`` scripted equals ``bra`` (its padding, routing, masking and crop), outputs and the
    gradients of q, k, v (Dv != D); ``bra_route`` routes to the same regions as ``bra_routing``."""
    torch.manual_seed(0)
    H, W = hw
    q, k = torch.randn(2, 2, H, W, 2, 8).unbind(0)
    v = torch.randn(2, H, W, 2, 6)
    hp, wp = -(-H // n_win) * n_win, -(-W // n_win) * n_win
    pad = [0, 0, 0, 0, 0, wp - W, 0, hp - H]
    idx = torch.jit.script(bra_route)(nn.functional.pad(q, pad), nn.functional.pad(k, pad), n_win, topk, [H, W])
    torch.testing.assert_close(idx.sort(-1).values, bra_routing(q, k, n_win, topk).sort(-1).values, rtol=0, atol=0)
    want_in = [t.clone().requires_grad_() for t in (q, k, v)]
    got_in = [t.clone().requires_grad_() for t in (q, k, v)]
    want = bra(*want_in, n_win, topk, scale=0.3, backend=backend)
    got = torch.jit.script(bra_padded)(*got_in, n_win, topk, 0.3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    want.square().sum().backward()
    got.square().sum().backward()
    for a, b in zip(got_in, want_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


# ---- the families that do not script ----------------------------------------------------------------
def test_every_family_is_listed():
    assert set(SCRIPTS) | set(NO_SCRIPT) == set(REPS), "classify every family: SCRIPTS or NO_SCRIPT (with why)"
    assert not set(SCRIPTS) & set(NO_SCRIPT)


_PROBE = """
import sys, warnings
import torch
from tests.models import create_tiny
warnings.filterwarnings("ignore")
for name in sys.argv[1:]:
    try:
        torch.jit.script(create_tiny(name, num_classes=5).eval())
        print(name, "scripts")
    except Exception as e:
        print(name, "raises", type(e).__name__)
"""


def test_unscriptable_families_raise():
    """Each ``NO_SCRIPT`` family's representative raises in ``torch.jit.script`` (a strict list: one that
    starts to script must move to ``SCRIPTS`` and the README's table). One subprocess: a failed script
    leaves half-compiled classes behind, which would make later scripts in this process fail."""
    if not NO_SCRIPT:
        pytest.skip("NO_SCRIPT is empty: every family scripts (test_family_scripts)")
    names = [REPS[f] for f in NO_SCRIPT]
    out = subprocess.run([sys.executable, "-c", _PROBE, *names], capture_output=True, text=True, timeout=600,
                         check=True).stdout
    result = dict(line.split(" ", 1) for line in out.splitlines())
    scripts = sorted(n for n in names if not result[n].startswith("raises"))
    assert not scripts, f"these now script: move their families to SCRIPTS and the README: {scripts}"
