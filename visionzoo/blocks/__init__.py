"""nn.Module building blocks, one concept per file."""
from ._create import TOKEN_MIXERS, create_token_mixer
from .channel_attn import (CHANNEL_ATTN, CbamAttn, ChannelMlp, EfficientChannelAttn, SqueezeExcite,
                           create_channel_attn, eca_kernel_size)
from .mlp import MLP_LAYERS, DWConvMlp, get_mlp_layer
from .neighborhood_attn import NeighborhoodAttn2d
from .rel_pos_attn import GlobalRelPosAttn2d
from .transformer_block import TransformerBlock

__all__ = ["CHANNEL_ATTN", "CbamAttn", "ChannelMlp", "DWConvMlp", "EfficientChannelAttn", "GlobalRelPosAttn2d",
           "MLP_LAYERS", "NeighborhoodAttn2d", "SqueezeExcite", "TOKEN_MIXERS", "TransformerBlock",
           "create_channel_attn", "create_token_mixer", "eca_kernel_size", "get_mlp_layer"]
