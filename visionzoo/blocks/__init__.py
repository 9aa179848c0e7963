"""nn.Module building blocks, one concept per file."""
from .channel_attn import (CHANNEL_ATTN, CbamAttn, ChannelMlp, EfficientChannelAttn, SqueezeExcite,
                           create_channel_attn, eca_kernel_size)

__all__ = ["CHANNEL_ATTN", "CbamAttn", "ChannelMlp", "EfficientChannelAttn", "SqueezeExcite",
           "create_channel_attn", "eca_kernel_size"]
