"""DiT (Peebles & Xie, 2023): embedders, adaLN-Zero blocks, the plain noise predictor and the routed backbone.

Reading order follows DiT's `models.py`: embedders -> attention and block -> final layer -> models ->
position embeddings -> configs -> the factory (registered, with one config per size, in
`d2it_transformers.plugin`).
"""

import math
from typing import ClassVar, NamedTuple

import attrs
import numpy as np
import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from d2it.attention import sdpa_attention
from d2it.errors import ConfigError, D2itError
from d2it.layout import pool_codes, unit_cells


def modulate(x, shift, scale):
    """adaLN modulation x * (1 + scale) + shift with per-sample (B, D) shift and scale."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


# ---------------------------------------------------------------------------------------------
# Embedding layers for timesteps, class labels and patches
# ---------------------------------------------------------------------------------------------


class TimestepEmbedder(nn.Module):
    """Embeds scalar timesteps into vectors: sinusoidal frequencies followed by a two-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim: int, max_period: float = 10000):
        """Sinusoidal embeddings (B, dim) of (possibly fractional) timesteps t (B,), as in GLIDE."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t):
        """(B,) timesteps -> (B, hidden_size)."""
        freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Embeds class labels; with dropout, row `num_classes` is the null class that guidance uses.

    As DiT, the null row exists only when `dropout_prob > 0` (a model trained without label
    dropout has no unconditional embedding, so it cannot be guided).
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.has_null = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + int(self.has_null), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    @property
    def null_class(self) -> int | None:
        """The index of the null class, or None without label dropout."""
        return self.num_classes if self.has_null else None

    def token_drop(self, labels, force_drop_ids=None):
        """Replace labels by the null class with probability dropout_prob, or where force_drop_ids == 1."""
        if not self.has_null:
            if force_drop_ids is not None:
                raise ConfigError("this model was built with class_dropout=0, so it has no null class to drop to")
            return labels
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels, train: bool, force_drop_ids=None):
        """(B,) labels -> (B, hidden_size), dropping labels in training or where forced."""
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)

    def upgrade_state_dict(self, state: dict, prefix: str):
        """Drop the null row of weights written when every table had one (`d2it.io.upgrade_state`)."""
        # that row was never trained without dropout (nothing drops to it), so nothing is lost
        key = prefix + "embedding_table.weight"
        table = state.get(key)
        if not self.has_null and table is not None and table.shape[0] == self.num_classes + 1:
            state[key] = table[: self.num_classes]


class PatchEmbed(nn.Module):
    """Image to patch tokens: a p x p convolution with stride p, flattened to (B, N, D) (timm's PatchEmbed)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        """(B, C, H, W) -> (B, H*W/p^2, D)."""
        return self.proj(x).flatten(2).transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# Core DiT model
# ---------------------------------------------------------------------------------------------


def split_heads(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, 3, heads, hd) q, k, v -> three (B, heads, N, hd) views, with no copy in forward or backward.

    Unbinding dim 2 stacks the three gradients straight into the (B, N, 3, heads, hd) layout of the qkv
    projection's output (one copy, not three zero-filled ones); unbinding a permuted (3, B, heads, N, hd)
    view would stack them head-major and need a second copy back to the projection's layout.
    """
    q, k, v = qkv.unbind(2)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection; the attention product is the injected backend."""

    def __init__(self, dim: int, num_heads: int, attention=None, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"hidden size {dim} is not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attention = attention or sdpa_attention
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        """(B, N, D) -> (B, N, D); `mask` as the attention backend takes it."""
        b, n, d = x.shape
        q, k, v = split_heads(self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim))
        out = self.attention(q, k, v, mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Two-layer MLP with tanh-approximated GELU (timm's Mlp as DiT uses it)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        """(..., D) -> (..., D)."""
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """A DiT block with adaptive layer norm zero (adaLN-Zero) conditioning.

    `attn` replaces the global self-attention layer (RefineNet passes a window attention layer).
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, attention=None, attn=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = attn if attn is not None else Attention(hidden_size, num_heads, attention)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x, c):
        """Tokens x (B, N, D) conditioned on c (B, D)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = torch.addcmul(x, gate_msa.unsqueeze(1), self.attn(modulate(self.norm1(x), shift_msa, scale_msa)))
        return torch.addcmul(x, gate_mlp.unsqueeze(1), self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    """The final layer of DiT: adaLN-modulated LayerNorm and a linear map to p*p*out_channels per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        """(B, N, D) tokens -> (B, N, p*p*out_channels)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def unpatchify(x, patch_size: int, channels: int, grid: tuple[int, int]):
    """(B, h*w, p*p*C) tokens -> (B, C, h*p, w*p) image."""
    h, w = grid
    return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=h, w=w, p=patch_size, q=patch_size, c=channels)


def _basic_init(module):
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _zero(*layers):
    for layer in layers:
        nn.init.zeros_(layer.weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def init_dit_weights(model: nn.Module):
    """DiT's initialisation: xavier linears, DiT embedders, zero adaLN modulation and final layers."""
    model.apply(_basic_init)
    for module in model.modules():
        if isinstance(module, PatchEmbed):
            w = module.proj.weight.data
            nn.init.xavier_uniform_(w.view([w.shape[0], -1]))  # as a linear layer, not a conv
            nn.init.zeros_(module.proj.bias)
        elif isinstance(module, LabelEmbedder):
            nn.init.normal_(module.embedding_table.weight, std=0.02)
        elif isinstance(module, TimestepEmbedder):
            nn.init.normal_(module.mlp[0].weight, std=0.02)
            nn.init.normal_(module.mlp[2].weight, std=0.02)
        elif isinstance(module, DiTBlock):
            _zero(module.adaLN_modulation[-1])
        elif isinstance(module, FinalLayer):
            _zero(module.adaLN_modulation[-1], module.linear)


def run_blocks(blocks, x, c, use_checkpoint: bool):
    """Apply blocks in order, with activation checkpointing when training with it enabled."""
    for block in blocks:
        if use_checkpoint and torch.is_grad_enabled():
            x = checkpoint(block, x, c, use_reentrant=False)
        else:
            x = block(x, c)
    return x


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for none)."""
    return next(module.parameters(), torch.empty(0)).device


class DiT(nn.Module):
    """Diffusion model with a Transformer backbone: the plain (fixed-grain) noise predictor."""

    grains = None

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        attention=None,
    ):
        super().__init__()
        _check_geometry(input_size, patch_size, hidden_size, num_heads, depth, "patch size")
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.input_size = input_size
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.grad_checkpointing = False
        self.grid = (input_size // patch_size, input_size // patch_size)

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.null_class = self.y_embedder.null_class
        # fixed sin-cos table: a buffer, so it is saved but not counted or trained as a parameter
        self.register_buffer("pos_embed", sincos_table(hidden_size, self.grid))
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio, attention=attention) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        init_dit_weights(self)

    def set_grad_checkpointing(self, enable: bool = True):
        """Recompute block activations in the backward pass to save memory."""
        self.grad_checkpointing = enable

    @property
    def label_dropout(self) -> float:
        """The probability that training drops a label to the null class."""
        return self.y_embedder.dropout_prob

    def forward(self, x, t, y, grain_map=None, force_drop_ids=None):
        """Noise (and variance) prediction (B, out_channels, H, W); `grain_map` is ignored.

        `force_drop_ids` (B,): drop exactly the labels where it is 1 instead of drawing the dropout
        (the trainer draws it per sample, so it does not depend on how the batch is split).
        """
        # position table first: the sum takes its (B, N, D) row-major layout, not the patch embedding's transposed
        # conv output (B, D, N in memory), which would make every block copy for LayerNorm and matmuls
        x = self.pos_embed + self.x_embedder(x)
        c = self.t_embedder(t) + self.y_embedder(y, self.training, force_drop_ids)
        x = run_blocks(self.blocks, x, c, self.grad_checkpointing)
        x = self.final_layer(x, c)
        return unpatchify(x, self.patch_size, self.out_channels, self.grid)

    def example_inputs(self, batch: int) -> tuple:
        """(x, t, y) for one forward call on this model's device."""
        return _example_xty(self, batch)


def _example_xty(model, batch: int):
    device = module_device(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, model.in_channels, model.input_size, model.input_size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.arange(batch) % model.num_classes
    return x.to(device), t.to(device), y.to(device)


def _check_geometry(input_size, patch, hidden_size, num_heads, depth, what):
    if depth < 0:
        raise ConfigError(f"depth must be at least 0, got {depth}")
    if num_heads < 1 or hidden_size % num_heads:
        raise ConfigError(f"hidden size {hidden_size} is not divisible by the number of heads {num_heads}")
    if hidden_size % 4:
        raise ConfigError(f"hidden size {hidden_size} must be a multiple of 4 for the 2-D sin-cos position embedding")
    if patch < 1 or input_size % patch:
        raise ConfigError(f"latent size {input_size} is not divisible by the {what} {patch}")


class RoutedOutput(NamedTuple):
    """What the routed backbone hands to a refiner."""

    tokens: torch.Tensor  # (B, regions, D) region features after the last block
    c: torch.Tensor  # (B, D) conditioning t_emb + y_emb
    rough: torch.Tensor  # (B, out_channels, H, W) patch (region-size) head: a prediction for every cell
    coarse: torch.Tensor  # (B, out_channels, h, w) coarse head: one prediction per region


class RoutingEmbed(nn.Module):
    """Routing module: one token per region embedding the codes of the region's grain, plus a grain embedding.

    A region of grain g holds (2**g)**2 codes of C channels; each grain has its own linear embedding of
    that many values (grain 0: the single coarse code; the finest grain: the region's full patch).
    """

    def __init__(self, in_channels: int, hidden_size: int, grains: int):
        super().__init__()
        self.grains = grains
        self.embed = nn.ModuleList(nn.Linear(in_channels * 4**g, hidden_size) for g in range(grains))
        self.grain_embed = nn.Embedding(grains, hidden_size)

    def forward(self, x, grain_map):
        """(B, C, H, W) copied-layout latent and (B, h, w) grain map -> (B, h*w, D) region tokens."""
        tokens = self.grain_embed(grain_map.flatten(1))
        for g, embed in enumerate(self.embed):
            codes = pool_codes(x, g, self.grains)  # the copied layout makes the mean the code itself
            n = 2**g
            patches = rearrange(codes, "b c (h p) (w q) -> b (h w) (c p q)", p=n, q=n)
            mask = (grain_map.flatten(1) == g).unsqueeze(-1).to(tokens.dtype)
            tokens = torch.addcmul(tokens, mask, embed(patches))
        return tokens


class RoutedDiT(nn.Module):
    """The D²iT backbone: DiT blocks on region tokens with a rough per-cell head and a coarse per-region head.

    `forward(x, t, y, grain_map)` returns a `RoutedOutput`; a refiner turns it into the layout output.
    """

    def __init__(
        self,
        input_size: int = 32,
        in_channels: int = 4,
        grains: int = 2,
        hidden_size: int = 1152,
        depth: int = 22,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        refine_depth: int = 6,
        attention=None,
    ):
        super().__init__()
        if grains < 2:
            raise ConfigError(f"the routed backbone needs at least 2 grains, got {grains}")
        self.region = unit_cells(0, grains)
        _check_geometry(input_size, self.region, hidden_size, num_heads, depth, "region size")
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.input_size = input_size
        self.grains = grains
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.num_classes = num_classes
        self.refine_depth = refine_depth
        self.grad_checkpointing = False
        self.grid = (input_size // self.region, input_size // self.region)

        self.x_embedder = RoutingEmbed(in_channels, hidden_size, grains)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.null_class = self.y_embedder.null_class
        self.register_buffer("pos_embed", sincos_table(hidden_size, self.grid))
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio, attention=attention) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, self.region, self.out_channels)
        self.coarse_layer = FinalLayer(hidden_size, 1, self.out_channels)
        init_dit_weights(self)
        nn.init.normal_(self.x_embedder.grain_embed.weight, std=0.02)

    def set_grad_checkpointing(self, enable: bool = True):
        """Recompute block activations in the backward pass to save memory."""
        self.grad_checkpointing = enable

    def check_grain_map(self, x, grain_map):
        """Raise a D2itError unless grain_map is a (B, h, w) map of valid grains matching x."""
        if grain_map is None:
            raise D2itError("the Dynamic Content Transformer needs a grain map; got none")
        want = (x.shape[0], *self.grid)
        if tuple(grain_map.shape) != want:
            raise D2itError(f"grain map has shape {tuple(grain_map.shape)}, expected {want} for this latent")

    @property
    def label_dropout(self) -> float:
        """The probability that training drops a label to the null class."""
        return self.y_embedder.dropout_prob

    def forward(self, x, t, y, grain_map, force_drop_ids=None) -> RoutedOutput:
        """Region features, conditioning and both heads' predictions for x_t (`force_drop_ids` as DiT's)."""
        self.check_grain_map(x, grain_map)
        grain_map = grain_map.long()
        tokens = self.x_embedder(x, grain_map) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training, force_drop_ids)
        tokens = run_blocks(self.blocks, tokens, c, self.grad_checkpointing)
        rough = unpatchify(self.final_layer(tokens, c), self.region, self.out_channels, self.grid)
        coarse = rearrange(self.coarse_layer(tokens, c), "b (h w) c -> b c h w", h=self.grid[0], w=self.grid[1])
        return RoutedOutput(tokens, c, rough, coarse)


# ---------------------------------------------------------------------------------------------
# Sine/cosine positional embedding (numpy, exactly as DiT / MAE)
# ---------------------------------------------------------------------------------------------


def get_2d_sincos_pos_embed(embed_dim: int, grid_size, cls_token: bool = False, extra_tokens: int = 0):
    """(H*W, embed_dim) table for a grid of int or (H, W) size; rows in row-major order."""
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    grid_h = np.arange(gh, dtype=np.float32)
    grid_w = np.arange(gw, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0).reshape([2, 1, gh, gw])
    pos_embed = get_2d_sincos_pos_embed_from_grid(embed_dim, grid)
    if cls_token and extra_tokens > 0:
        pos_embed = np.concatenate([np.zeros([extra_tokens, embed_dim]), pos_embed], axis=0)
    return pos_embed


def get_2d_sincos_pos_embed_from_grid(embed_dim: int, grid):
    """Half the channels encode one grid coordinate, half the other."""
    assert embed_dim % 2 == 0
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos):
    """(M, embed_dim) sin/cos features of positions pos (M,)."""
    assert embed_dim % 2 == 0
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_table(embed_dim: int, grid) -> torch.Tensor:
    """The sin-cos table as a float32 tensor (1, H*W, embed_dim)."""
    return torch.tensor(get_2d_sincos_pos_embed(embed_dim, grid), dtype=torch.float32).unsqueeze(0)


# ---------------------------------------------------------------------------------------------
# Configs and the factory
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class DiTConfig:
    """Options of a DiT backbone: depth None = the size's `blocks`, minus refine_depth when routed."""

    depth: int | None = None
    hidden_size: int = 1152
    num_heads: int = 16
    patch_size: int = 2
    mlp_ratio: float = 4.0
    class_dropout: float = 0.1
    learn_sigma: bool = True
    refine_depth: int = 6  # of the `blocks`, how many D²iT gives to RefineNet
    blocks: ClassVar[int] = 28  # the size's total depth (DiT's `depth`)


@attrs.frozen
class DiTS2Config(DiTConfig):
    """Options of DiT-S/2: width 384, 6 heads, 12 blocks (D²iT: 10 + 2 RefineNet)."""

    hidden_size: int = 384
    num_heads: int = 6
    refine_depth: int = 2
    blocks: ClassVar[int] = 12


@attrs.frozen
class DiTB2Config(DiTConfig):
    """Options of DiT-B/2: width 768, 12 heads, 12 blocks (D²iT: 10 + 2 RefineNet)."""

    hidden_size: int = 768
    num_heads: int = 12
    refine_depth: int = 2
    blocks: ClassVar[int] = 12


@attrs.frozen
class DiTL2Config(DiTConfig):
    """Options of DiT-L/2: width 1024, 16 heads, 24 blocks (D²iT: 20 + 4 RefineNet)."""

    hidden_size: int = 1024
    num_heads: int = 16
    refine_depth: int = 4
    blocks: ClassVar[int] = 24


@attrs.frozen
class DiTXL2Config(DiTConfig):
    """Options of DiT-XL/2: width 1152, 16 heads, 28 blocks (D²iT: 22 + 6 RefineNet)."""


@attrs.frozen
class DiTS1Config(DiTS2Config):
    """Options of DiT-S/1: DiT-S with patch size 1."""

    patch_size: int = 1


@attrs.frozen
class DiTB1Config(DiTB2Config):
    """Options of DiT-B/1: DiT-B with patch size 1."""

    patch_size: int = 1


@attrs.frozen
class DiTL1Config(DiTL2Config):
    """Options of DiT-L/1: DiT-L with patch size 1."""

    patch_size: int = 1


@attrs.frozen
class DiTXL1Config(DiTXL2Config):
    """Options of DiT-XL/1: DiT-XL with patch size 1."""

    patch_size: int = 1


def make_backbone(config: DiTConfig, *, input_size, in_channels, num_classes, grains, attention):
    """Build a DiT of `config`'s size: a plain DiT for grains=None, the routed D²iT backbone for grains=k."""
    common = dict(
        in_channels=in_channels,
        hidden_size=config.hidden_size,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        class_dropout_prob=config.class_dropout,
        num_classes=num_classes,
        learn_sigma=config.learn_sigma,
        attention=attention,
    )
    if not 0.0 <= config.class_dropout < 1.0:
        raise ConfigError(f"class_dropout must be in [0, 1), got {config.class_dropout}")
    if grains is None or grains == 1:
        depth = config.blocks if config.depth is None else config.depth
        return DiT(input_size=input_size, patch_size=config.patch_size, depth=depth, **common)
    region = unit_cells(0, grains)
    if config.patch_size != region:
        raise ConfigError(
            f"a {grains}-grain routed backbone has one token per region of {region}x{region} cells, so it needs "
            f"patch_size {region}, got {config.patch_size}; use a patch-{region} backbone or "
            f"--set backbone.patch_size={region}"
        )
    if config.refine_depth < 0:
        raise ConfigError(f"refine_depth must be at least 0, got {config.refine_depth}")
    depth = config.blocks - config.refine_depth if config.depth is None else config.depth
    return RoutedDiT(input_size=input_size, grains=grains, depth=depth, refine_depth=config.refine_depth, **common)
