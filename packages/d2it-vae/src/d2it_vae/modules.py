"""LDM autoencoder building blocks: residual and attention blocks, the hierarchical encoder, the decoder.

Follows the KL-autoencoder of Latent Diffusion (Rombach et al. 2022, `ldm/modules/diffusionmodules/model.py`).
The encoder is the LDM trunk with one *tap* per grain on its lowest resolutions; each tap has its own
mid block and head. With one tap it is exactly the LDM encoder.
"""

import torch
import torch.nn.functional as F
from torch import nn

from d2it.attention import sdpa_attention


def normalize(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm as LDM uses it (eps 1e-6, affine)."""
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


#################################################################################
#                                    Blocks                                     #
#################################################################################


class IdentityConv(nn.Conv2d):
    """A 1x1 convolution initialised to the identity: LDM's `quant_conv` / `post_quant_conv`.

    Weights written before the layer existed load as the identity (`upgrade_state_dict`), so an
    older model directory keeps computing exactly what it computed.
    """

    def __init__(self, channels: int):
        super().__init__(channels, channels, 1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(channels).reshape(channels, channels, 1, 1))
            self.bias.zero_()

    def upgrade_state_dict(self, state: dict, prefix: str):
        """Fill a missing weight and bias with the identity (`d2it.io.upgrade_state`)."""
        c = self.in_channels
        if prefix + "weight" not in state and prefix + "bias" not in state:
            state[prefix + "weight"] = torch.eye(c, dtype=self.weight.dtype).reshape(c, c, 1, 1)
            state[prefix + "bias"] = torch.zeros(c, dtype=self.bias.dtype)


class ResnetBlock(nn.Module):
    """Two GroupNorm-SiLU-conv3x3 layers with a (1x1 projected) skip connection."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = normalize(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = normalize(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        hn = self.norm(x)
        q, k, v = (t.reshape(b, 1, c, h * w).transpose(-1, -2) for t in (self.q(hn), self.k(hn), self.v(hn)))
        out = sdpa_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 conv3x3 with LDM's asymmetric (0, 1, 0, 1) padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """ResnetBlock, (attention), ResnetBlock at constant width."""

    def __init__(self, channels: int, groups: int, dropout: float, attn: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups, dropout)
        self.attn_1 = AttnBlock(channels, groups) if attn else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, groups, dropout)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution of a trunk: residual blocks, each optionally followed by attention."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, groups: int, dropout: float, attn: bool):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        for i in range(num_blocks):
            self.block.append(ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups, dropout))
            self.attn.append(AttnBlock(out_channels, groups) if attn else nn.Identity())

    def forward(self, x):
        for block, attn in zip(self.block, self.attn):
            x = attn(block(x))
        return x


class TapHead(nn.Module):
    """A tap's own mid block and head: GroupNorm, SiLU, conv3x3 to the regularizer's input channels."""

    def __init__(self, channels: int, out_channels: int, groups: int, dropout: float, attn: bool):
        super().__init__()
        self.mid = MidBlock(channels, groups, dropout, attn)
        self.norm_out = normalize(channels, groups)
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x):
        return self.conv_out(F.silu(self.norm_out(self.mid(x))))


#################################################################################
#                              Encoder and decoder                              #
#################################################################################


class HierarchicalEncoder(nn.Module):
    """LDM encoder trunk with taps on its `taps` lowest resolutions; returns head outputs coarsest first."""

    def __init__(
        self,
        *,
        in_channels: int = 3,
        base_width: int = 128,
        channel_mult: tuple = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_levels: int = 2,
        mid_attn: bool = True,
        out_channels: int = 8,
        taps: int = 2,
        groups: int = 32,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.taps = taps
        n = len(channel_mult)
        self.conv_in = nn.Conv2d(in_channels, base_width, 3, padding=1)
        widths = [base_width * m for m in channel_mult]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = base_width
        for i, width in enumerate(widths):
            self.down.append(Level(prev, width, num_res_blocks, groups, dropout, attn=i >= n - attn_levels))
            self.downsample.append(Downsample(width) if i < n - 1 else nn.Identity())
            prev = width
        # tap t (grain t, 0 = coarsest) reads level n - 1 - t
        self.tap_levels = [n - 1 - t for t in range(taps)]
        self.heads = nn.ModuleList(TapHead(widths[i], out_channels, groups, dropout, mid_attn) for i in self.tap_levels)

    def forward(self, x) -> list[torch.Tensor]:
        feats = []
        h = self.conv_in(x)
        for level, down in zip(self.down, self.downsample):
            h = level(h)
            feats.append(h)
            h = down(h)
        return [head(feats[i]) for head, i in zip(self.heads, self.tap_levels)]


class Decoder(nn.Module):
    """LDM decoder: conv_in, mid block, upsampling levels of num_res_blocks + 1 blocks, GroupNorm-SiLU-conv_out."""

    def __init__(
        self,
        *,
        latent_channels: int = 4,
        out_channels: int = 3,
        base_width: int = 128,
        channel_mult: tuple = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        attn_levels: int = 0,
        mid_attn: bool = True,
        groups: int = 32,
        dropout: float = 0.0,
    ):
        super().__init__()
        n = len(channel_mult)
        widths = [base_width * m for m in channel_mult]
        self.conv_in = nn.Conv2d(latent_channels, widths[-1], 3, padding=1)
        self.mid = MidBlock(widths[-1], groups, dropout, mid_attn)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        prev = widths[-1]
        for i in reversed(range(n)):
            self.up.append(Level(prev, widths[i], num_res_blocks + 1, groups, dropout, attn=i >= n - attn_levels))
            self.upsample.append(Upsample(widths[i]) if i > 0 else nn.Identity())
            prev = widths[i]
        self.norm_out = normalize(widths[0], groups)
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level, up in zip(self.up, self.upsample):
            h = up(level(h))
        return self.conv_out(F.silu(self.norm_out(h)))
