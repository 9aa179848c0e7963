"""Reduced configurations per family, so the contract suite runs every registered model quickly.

Every registered name is still built at full size on the meta device (parameter counts); these
overrides only shrink the models that actually run. A family missing here runs at full size.
"""
import visionzoo
from visionzoo.models._registry import MODELS

TINY = {
    "ca_resnet": lambda cfg: dict(layers=(1,) * len(cfg.layers), widths=(8, 16, 32, 64), stem_width=8,
                                  **({"groups": 4, "base_width": 8} if cfg.groups > 1 else {})),
    "eca_mobilenetv2": lambda cfg: dict(width_mult=0.25, settings=tuple((t, c, 1, s) for t, c, _, s in cfg.settings)),
    # NAT / DiNAT / DiNAT_s: 16/32/64/128 wide, one layer per stage; isotropic: 4 groups of one layer, 32 wide
    "nat": lambda cfg: dict(depths=(1, 1, 1, 1), embed_dim=16, num_heads=(1, 2, 2, 4)),
    "dinat_s": lambda cfg: dict(depths=(1, 1, 1, 1), embed_dim=16, num_heads=(1, 2, 2, 4)),
    "nat_isotropic": lambda cfg: dict(depths=(1, 1, 1, 1), embed_dim=32, num_heads=(2, 2, 2, 2)),
    # MaxViT: window 4 (so a 64 px input pads every stage's partitions but the first), 32-wide heads
    "maxvit": lambda cfg: dict(embed_dims=(32, 32, 64, 64), depths=(1, 1, 1, 1), stem_width=16, window=4),
    # HaloNet: 4x4 blocks with halo 1, one or two blocks per stage, the table's halo layout clipped to them
    "halonet": lambda cfg: dict(depths=(1, 1, 2, 1), channels=(32, 64, 64, 128), stem_chs=16, block_size=4, halo_size=1,
                                num_heads=(2, 2, 2, 2), num_features=64 if cfg.num_features else 0,
                                group_size=4 if cfg.group_size else 0, dim_head=8 if cfg.dim_head else None,
                                halo_blocks=tuple(tuple(j for j in idx if j < d) or ((d - 1,) if i else ())
                                                  for i, (idx, d) in enumerate(zip(cfg.halo_blocks, (1, 1, 2, 1))))),
    # BiFormer: 16..64 wide, one block per stage, head dim 8, 2 x 2 regions (fewer interpreted Triton
    # programs; small maps still pad and mask)
    "biformer": lambda cfg: dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64), head_dim=8, n_win=2,
                                 topks=(1, 2, 3, -2)),
    "single_head_vit": lambda cfg: dict(embed_dims=(16, 24, 32), partial_dims=(4, 8, 8), depths=(1, 1, 1)),
}


def tiny_kwargs(name: str) -> dict:
    entry = MODELS[name]
    fn = TINY.get(entry.family)
    return fn(entry.cfg) if fn else {}


def create_tiny(name: str, **kwargs):
    return visionzoo.create_model(name, **tiny_kwargs(name), **kwargs)
