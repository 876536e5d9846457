"""RefineNet: adaLN-Zero blocks with window attention on the finest (cell) grid, correcting the backbone.

Reading order: window geometry and partitioning -> window attention -> RefineNet. The dense RefineNet
runs on every cell; `d2it_transformers.sparse.SparseRefineNet` runs the same weights on fine cells only.
"""

import torch
from einops import rearrange
from torch import nn

from d2it.errors import ConfigError
from d2it_transformers.dit import (
    Attention,
    DiTBlock,
    FinalLayer,
    PatchEmbed,
    init_dit_weights,
    run_blocks,
    sincos_table,
)

# ---------------------------------------------------------------------------------------------
# Window attention
# ---------------------------------------------------------------------------------------------


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, D) -> (B * windows, mh * mw, D), windows in row-major order; H, W divisible by the window."""
    b, h, w, d = x.shape
    mh, mw = window
    x = x.view(b, h // mh, mh, w // mw, mw, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, mh * mw, d)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """(B * windows, mh * mw, D) -> (B, H, W, D): the inverse of `window_partition`."""
    mh, mw = window
    h, w = grid
    d = windows.shape[-1]
    x = windows.view(-1, h // mh, w // mw, mh, mw, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, d)


def window_geometry(grid: tuple[int, int], window: int | None):
    """(window shape, padded grid, windows per sample) of `window`-cell windows (None: the whole grid) on `grid`."""
    h, w = grid
    mh, mw = (h, w) if window is None else (min(window, h), min(window, w))
    padded = (-(-h // mh) * mh, -(-w // mw) * mw)
    return (mh, mw), padded, (padded[0] // mh) * (padded[1] // mw)


class WindowAttention(Attention):
    """Self-attention within non-overlapping windows of a token grid (Swin's W-MSA without relative bias).

    Windows larger than the grid shrink to it; a grid the window does not divide is padded and the
    padding masked out of the keys. `window=None` is one window over the whole grid (global attention).
    With `window_major` the tokens arrive already grouped window by window (see `to_window_major`), so
    attention needs no partition copies; this needs a grid the window divides.
    """

    def __init__(
        self, dim: int, num_heads: int, attention, grid: tuple[int, int], window: int | None, window_major: bool = False
    ):
        super().__init__(dim, num_heads, attention)
        h, w = self.grid = tuple(grid)
        self.window, self.padded, self.windows = window_geometry(self.grid, window)
        if window_major and self.padded != self.grid:
            raise ValueError(f"window-major tokens need a grid {self.grid} divisible by the window {self.window}")
        self.window_major = window_major
        mh, mw = self.window
        valid = None
        if self.padded != self.grid:
            keep = torch.zeros(self.padded, dtype=torch.bool)
            keep[:h, :w] = True
            valid = window_partition(keep[None, :, :, None], self.window).view(self.windows, 1, 1, mh * mw)
        self.register_buffer("key_mask", valid, persistent=False)

    def forward(self, x, mask=None):
        """(B, H*W, D) tokens, in row-major grid order or window-major order -> (B, H*W, D) in the same order."""
        b, n, d = x.shape
        if self.window_major or (self.windows == 1 and self.padded == self.grid):
            return super().forward(x.view(b * self.windows, n // self.windows, d)).view(b, n, d)
        (h, w), (ph, pw), (mh, mw) = self.grid, self.padded, self.window
        heads, hd = self.num_heads, self.head_dim
        qkv = self.qkv(x).view(b, h, w, 3 * d)
        if (ph, pw) != (h, w):
            qkv = nn.functional.pad(qkv, (0, 0, 0, pw - w, 0, ph - h))
        # one copy: (B, nh, mh, nw, mw, 3, heads, hd) -> (3, B * windows, heads, mh * mw, hd)
        qkv = qkv.view(b, ph // mh, mh, pw // mw, mw, 3, heads, hd).permute(5, 0, 1, 3, 6, 2, 4, 7)
        qkv = qkv.reshape(3, b * self.windows, heads, mh * mw, hd)
        if self.key_mask is not None:
            mask = self.key_mask.repeat(b, 1, 1, 1)
        q, k, v = qkv.unbind(0)  # one stacked gradient in backward, not three zero-filled ones
        out = self.attention(q, k, v, mask)
        out = out.view(b, ph // mh, pw // mw, heads, mh, mw, hd).permute(0, 1, 4, 2, 5, 3, 6).reshape(b, ph, pw, d)
        if (ph, pw) != (h, w):
            out = out[:, :h, :w]
        return self.proj(out.reshape(b, n, d))


def to_window_major(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) grid -> (B, C, windows * mh, mw): a 1x1 convolution of it yields window-major tokens."""
    mh, mw = window
    return rearrange(x, "b c (nh mh) (nw mw) -> b c (nh nw mh) mw", mh=mh, mw=mw)


# ---------------------------------------------------------------------------------------------
# RefineNet
# ---------------------------------------------------------------------------------------------


class RefineNet(nn.Module):
    """Efficient RefineNet: adaLN-Zero window-attention blocks on the cell grid predicting a per-cell correction.

    Tokens = patch-1 embedding of x_t + region features projected D -> s*s*D and unfolded to the region's
    s x s cells + a learnable position table (initialised to the sin-cos table).
    """

    def __init__(
        self,
        input_size: int,
        in_channels: int,
        out_channels: int,
        region: int,
        hidden_size: int,
        num_heads: int,
        depth: int,
        window: int | None,
        mlp_ratio: float = 4.0,
        attention=None,
        window_major: bool | None = None,
    ):
        super().__init__()
        self.input_size = input_size
        self.region = region
        self.out_channels = out_channels
        self.window = window
        self.grad_checkpointing = False
        grid = (input_size, input_size)
        shape, padded, self.windows = window_geometry(grid, window)
        fits = padded == grid and shape[0] % region == 0 and shape[1] % region == 0
        if window_major is None:
            window_major = fits
        elif window_major and not fits:
            raise ConfigError(f"window-major order needs {shape[0]}x{shape[1]} windows tiling the grid by regions")
        # window-major: tokens grouped window by window for all blocks, so attention needs no partition copies
        self.window_major = window_major
        self.window_shape = shape
        self.x_embedder = PatchEmbed(1, in_channels, hidden_size)
        self.region_proj = nn.Linear(hidden_size, region * region * hidden_size)
        self.pos_embed = nn.Parameter(sincos_table(hidden_size, grid))
        self.blocks = nn.ModuleList(
            DiTBlock(
                hidden_size,
                num_heads,
                mlp_ratio,
                attn=WindowAttention(hidden_size, num_heads, attention, grid, window, window_major),
            )
            for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, 1, out_channels)
        init_dit_weights(self)

    def set_grad_checkpointing(self, enable: bool = True):
        """Recompute block activations in the backward pass to save memory."""
        self.grad_checkpointing = enable

    def forward(self, x, tokens, c):
        """Correction (B, out_channels, H, W) from x_t (B, C, H, W), region tokens (B, h*w, D) and c (B, D)."""
        b, _, h, w = x.shape
        s = self.region
        feats = self.region_proj(tokens)
        pos = self.pos_embed
        if self.window_major:
            (mh, mw), cells = self.window_shape, self.x_embedder(to_window_major(x, self.window_shape))
            a, e = mh // s, mw // s  # regions per window side
            order = "b (nh a nw e) (p q d) -> b (nh nw a p e q) d"
            feats = rearrange(feats, order, a=a, e=e, nw=w // mw, p=s, q=s)
            pos = rearrange(pos, "o (nh mh nw mw) d -> o (nh nw mh mw) d", mh=mh, mw=mw, nw=w // mw)
        else:
            cells = self.x_embedder(x)
            feats = rearrange(feats, "b (i j) (p q d) -> b (i p j q) d", j=w // s, p=s, q=s)
        # the (row-major) region features first: the sum takes their layout, not the conv output's transposed one
        cells = run_blocks(self.blocks, feats + cells + pos, c, self.grad_checkpointing)
        out = self.final_layer(cells, c)  # (B, H*W, out_channels)
        if self.window_major:
            mh, mw = self.window_shape
            return rearrange(out, "b (nh nw mh mw) c -> b c (nh mh) (nw mw)", mh=mh, mw=mw, nw=w // mw)
        return out.transpose(1, 2).reshape(b, self.out_channels, h, w)
