"""nn.Module building blocks, one concept per file."""
from .channel_attn import (CHANNEL_ATTN, CbamAttn, ChannelMlp, EfficientChannelAttn, SqueezeExcite,
                           create_channel_attn, eca_kernel_size)
from .neighborhood_attn import NeighborhoodAttn2d
from .rel_pos_attn import GlobalRelPosAttn2d
from .transformer_block import TransformerBlock

__all__ = ["CHANNEL_ATTN", "CbamAttn", "ChannelMlp", "EfficientChannelAttn", "GlobalRelPosAttn2d",
           "NeighborhoodAttn2d", "SqueezeExcite", "TransformerBlock", "create_channel_attn", "eca_kernel_size"]
