"""Sparse RefineNet: RefineNet's window attention over the fine cells only, packed across the batch.

Coarse regions take the coarse head's prediction, so RefineNet's correction there is thrown away; the
sparse RefineNet never computes it. Fine cells of all samples are packed into one (N, D) sequence
grouped window by window, so every linear layer runs on N = fine cells rather than B * H * W tokens.
Attention is variable-length: one sequence per non-empty window. On CUDA in fp16/bf16 with xformers
installed (attention `auto` or `xformers`) it is one xformers call with a `BlockDiagonalMask`;
elsewhere the windows are padded to the longest one and padded keys are masked (`pad_windows`),
which on CPU beats one SDPA call over all packed tokens with a block-diagonal boolean mask
(`blockdiag_mask`): that call scores every pair of packed tokens, (B * windows)² times more than
needed, and the fused CPU kernel gains nothing from the mask (benchmarks/bench_sparse.py measures both).
The result equals the dense RefineNet with coarse cells masked out of the keys, with the same weights.
"""

import weakref
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

from d2it.attention import HALF, auto_attention, xformers_attention, xformers_available
from d2it.counting import counting
from d2it.layout import cell_grain, unit_cells
from d2it_transformers.dit import split_heads
from d2it_transformers.refine import RefineNet, window_geometry
from d2it_transformers.regional import guarded_compile

_XFORMERS = xformers_available()


class PackedLayout(NamedTuple):
    """Where the packed fine cells of one batch come from and how they group into windows."""

    sample: torch.Tensor  # (N,) sample of each packed cell
    cells: torch.Tensor  # (N,) flat index into the (B * H * W) row-major cell grid
    regions: torch.Tensor  # (Nr,) flat index b * R + r of each fine region (embedding order)
    order: torch.Tensor | None  # (N,) embedding order -> window order; None when they agree
    seqlens: list[int]  # cells per non-empty window, in packed order
    dest: torch.Tensor | None  # (N,) slot in the padded (windows * max_len) layout; None without padding
    key_mask: torch.Tensor | None  # (windows, 1, 1, max_len) True for real keys; None without padding

    @property
    def max_len(self) -> int:
        """Cells of the longest window."""
        return max(self.seqlens, default=0)


def pad_windows(seqlens: list[int], device, counts: torch.Tensor | None = None):
    """(dest, key_mask) placing packed tokens of windows of `seqlens` cells in a padded (W, max) layout.

    `counts` (every window's length, empty ones included, on the device) builds the window lengths
    there instead of copying `seqlens` from the host, which would be a host sync on CUDA.
    """
    longest = max(seqlens, default=0)
    if all(n == longest for n in seqlens):
        return None, None
    if counts is None:
        lens = torch.tensor(seqlens, device=device)
    else:  # the non-empty windows in order: a stable sort puts them first, no data-dependent shape
        nonempty = torch.sort((counts == 0).to(torch.uint8), stable=True).indices[: len(seqlens)]
        lens = counts.index_select(0, nonempty)
    window = torch.repeat_interleave(torch.arange(len(seqlens), device=device), lens, output_size=sum(seqlens))
    starts = torch.cumsum(lens, 0) - lens
    pos = torch.arange(window.numel(), device=device) - starts[window]
    key_mask = (torch.arange(longest, device=device) < lens[:, None]).view(len(seqlens), 1, 1, longest)
    return window * longest + pos, key_mask


def host_list(counts: torch.Tensor) -> list[int]:
    """The sparse path's one device-to-host copy per layout (a host sync on CUDA): the window lengths."""
    return counts.tolist()


def blockdiag_mask(seqlens: list[int], device=None) -> torch.Tensor:
    """(N, N) boolean block-diagonal mask over packed tokens: True within each window's block."""
    ids = torch.repeat_interleave(torch.arange(len(seqlens), device=device), torch.tensor(seqlens, device=device))
    return ids[:, None] == ids[None, :]


def packed_attention(attention, qkv: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """Attention within windows of packed (N, 3, heads, hd) q, k, v -> (N, heads * hd), `attention` the backend."""
    n, _, heads, hd = qkv.shape
    if (
        _XFORMERS
        and not counting()
        and qkv.is_cuda
        and qkv.dtype in HALF
        and attention in (auto_attention, xformers_attention)
    ):
        # xformers is an optional extra, imported only where it can run
        import xformers.ops as xops
        from xformers.ops.fmha.attn_bias import BlockDiagonalMask

        q, k, v = qkv[None].unbind(2)
        bias = BlockDiagonalMask.from_seqlens(layout.seqlens)
        return xops.memory_efficient_attention(q, k, v, attn_bias=bias).view(n, heads * hd)
    windows, longest = len(layout.seqlens), layout.max_len
    mask = layout.key_mask
    if layout.dest is not None:
        flat = qkv.reshape(n, 3 * heads * hd)
        qkv = flat.new_zeros(windows * longest, flat.shape[1]).index_copy(0, layout.dest, flat)
        if counting():
            mask = mask & mask.transpose(-1, -2)  # count the real query-key pairs only
    q, k, v = split_heads(qkv.view(windows, longest, 3, heads, hd))
    out = attention(q, k, v, mask).transpose(1, 2).reshape(windows * longest, heads * hd)
    return out if layout.dest is None else out.index_select(0, layout.dest)


class SparseRefineNet(RefineNet):
    """RefineNet on the fine cells only: same parameters as `RefineNet`, cost proportional to the fine ratio.

    `forward(x, tokens, c, grain_map)` returns the correction on the cell grid, zero on coarse cells.
    """

    sparse = True

    def __init__(self, *args, grains: int = 2, **kwargs):
        kwargs.setdefault("window_major", False)  # the packed path has its own order; keep the dense one simple
        super().__init__(*args, **kwargs)
        self.grains = grains
        size, s = self.input_size, self.region
        h = w = size // s
        (mh, mw), (_, pw), _ = window_geometry((size, size), self.window)
        nw = pw // mw
        i = torch.arange(size)
        cell_window = ((i[:, None] // mh) * nw + (i[None, :] // mw)).flatten()  # (H * W,)
        ri, rj = torch.arange(h)[:, None], torch.arange(w)[None, :]
        p = torch.arange(s)
        # cells of each region (R, s*s) in (p, q) order, the order of region_proj's output
        region_cells = ((ri * s)[..., None, None] + p[:, None]) * size + (rj * s)[..., None, None] + p[None, :]
        region_cells = region_cells.reshape(h * w, s * s)
        self.aligned = mh % s == 0 and mw % s == 0  # every window holds whole regions
        region_window = cell_window[region_cells[:, 0]]
        region_order = torch.argsort(region_window * (h * w) + torch.arange(h * w))
        self.register_buffer("cell_window", cell_window, persistent=False)
        self.register_buffer("region_cells", region_cells, persistent=False)
        self.register_buffer("region_window", region_window, persistent=False)
        self.register_buffer("region_order", region_order, persistent=False)
        self._layout_cache = None
        self.packed_parts = None  # compiled (attention_input, block_output) after `compile_packed`

    def layout(self, grain_map: torch.Tensor) -> PackedLayout:
        """The packed layout of the fine (non-coarsest) cells of a (B, h, w) grain map.

        Everything stays on the device except the window lengths (`host_list`): one host sync. The
        last layout is kept for the same, unmodified grain-map tensor, so a sampler that passes one map
        for all steps pays that sync once per image batch, not once per step.
        """
        version = None if grain_map.is_inference() else grain_map._version  # inference tensors have no version
        cached = self._layout_cache
        if version is not None and cached is not None and cached[0]() is grain_map and cached[1] == version:
            return cached[2]
        b = grain_map.shape[0]
        r = self.region_order.numel()
        size, cells_per_region = self.input_size, self.region * self.region
        fine = grain_map.reshape(b, r)[:, self.region_order] > 0  # (B, R), regions grouped window by window
        if self.aligned:
            window = self.region_window[self.region_order].expand(b, r)
            counts = fine.new_zeros(b, self.windows, dtype=torch.long).scatter_add_(1, window, fine.long())
            counts = counts * cells_per_region
        else:
            fine_cells = (cell_grain(grain_map, self.grains) > 0).long().view(b, size * size)
            counts = fine_cells.new_zeros(b, self.windows).scatter_add_(1, self.cell_window.expand(b, -1), fine_cells)
        counts = counts.flatten()
        lengths = host_list(counts)  # the one host sync per layout
        seqlens = [n for n in lengths if n]
        fine_regions = sum(lengths) // cells_per_region
        # indices of the fine regions, sorted by sample, then window, then region: a stable sort, no nonzero()
        flat = torch.sort((~fine.flatten()).to(torch.uint8), stable=True).indices[:fine_regions]
        sample_r = flat // r
        region = self.region_order[flat % r]
        regions = sample_r * r + region
        sample = sample_r.repeat_interleave(cells_per_region)
        cells = (sample_r[:, None] * size**2 + self.region_cells[region]).flatten()
        order = None
        if not self.aligned:
            key = sample * self.windows + self.cell_window[cells % size**2]
            order = torch.argsort(key, stable=True)
            sample, cells = sample[order], cells[order]
        dest, key_mask = pad_windows(seqlens, grain_map.device, counts)
        layout = PackedLayout(sample, cells, regions, order, seqlens, dest, key_mask)
        self._layout_cache = (weakref.ref(grain_map), version, layout)
        return layout

    def compile_packed(self, **options):
        """Compile the packed block's parts around the attention (regional compilation; the packing stays eager)."""
        self.packed_parts = (
            guarded_compile(attention_input, "the sparse block's attention input", **options),
            guarded_compile(block_output, "the sparse block's output", **options),
        )

    def embed(self, x, tokens, layout: PackedLayout) -> torch.Tensor:
        """Packed input tokens (N, D): patch-1 embedding + projected region features + position, fine cells only."""
        b, ch, size, _ = x.shape
        s, d = self.region, tokens.shape[-1]
        n = layout.sample.numel()
        patches = x.view(b, ch, size // s, s, size // s, s).permute(0, 2, 4, 3, 5, 1).reshape(-1, s * s * ch)
        patches = patches.index_select(0, layout.regions).view(n, ch)  # (N, C) in region-cell order
        feats = self.region_proj(tokens.reshape(-1, d).index_select(0, layout.regions)).view(n, d)
        pos_index = self.region_cells[layout.regions % self.region_cells.shape[0]].flatten()
        h = feats + self.pos_embed[0].index_select(0, pos_index)
        proj = self.x_embedder.proj
        h = torch.addmm(h, patches, proj.weight.view(d, ch).t()).add_(proj.bias)
        return h if layout.order is None else h.index_select(0, layout.order)

    def forward(self, x, tokens, c, grain_map=None, layout: PackedLayout | None = None):
        """Correction (B, out_channels, H, W), zero on coarse cells, from x_t, region tokens, c and the grain map.

        `layout` is `self.layout(grain_map)` when the caller computed it already.
        """
        if grain_map is None:
            raise ValueError("the sparse RefineNet needs the grain map")
        b, _, size, _ = x.shape
        layout = self.layout(grain_map) if layout is None else layout
        if layout.sample.numel() == 0:
            return x.new_zeros(b, self.out_channels, size, size)
        h = self.embed(x, tokens, layout)
        parts = self.packed_parts or (attention_input, block_output)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                h = checkpoint(packed_block, block, h, c, layout, parts, use_reentrant=False)
            else:
                h = packed_block(block, h, c, layout, parts)
        final = self.final_layer
        shift, scale = token_modulation(final.adaLN_modulation(c), 2, (1,), layout.sample)
        pred = final.linear(torch.addcmul(shift, final.norm_final(h), scale))
        out = pred.new_zeros(b * size * size, self.out_channels).index_copy(0, layout.cells, pred)
        return out.view(b, size, size, -1).permute(0, 3, 1, 2)


def token_modulation(mod: torch.Tensor, chunks: int, scales: tuple[int, ...], sample: torch.Tensor):
    """(B, chunks * D) adaLN output -> `chunks` per-token (N, D) views; 1 is added to the `scales` chunks on B rows."""
    b, width = mod.shape
    # built by comparisons with Python ints: no index or value tensor is copied from the host
    index = torch.arange(chunks, device=mod.device)[:, None]
    one = sum((index == i).to(mod.dtype) for i in scales)
    return (mod.reshape(b, chunks, width // chunks) + one).view(b, width).index_select(0, sample).chunk(chunks, dim=1)


def attention_input(block, x, mod, sample) -> torch.Tensor:
    """Packed (N, 3 * D) q, k, v of a `DiTBlock`: adaLN-modulated norm1, then the qkv projection."""
    d = mod.shape[1] // 6  # DiT's chunk order: shift, scale, gate of attention, then of the MLP
    shift_msa, scale_msa = token_modulation(mod[:, : 2 * d], 2, (1,), sample)
    return block.attn.qkv(torch.addcmul(shift_msa, block.norm1(x), scale_msa))


def block_output(block, x, a, mod, sample) -> torch.Tensor:
    """The rest of a `DiTBlock` on packed tokens: gated attention projection, then the gated modulated MLP."""
    d = mod.shape[1] // 6
    gate_msa, shift_mlp, scale_mlp, gate_mlp = token_modulation(mod[:, 2 * d :], 4, (2,), sample)
    x = torch.addcmul(x, gate_msa, block.attn.proj(a))
    return torch.addcmul(x, gate_mlp, block.mlp(torch.addcmul(shift_mlp, block.norm2(x), scale_mlp)))


def packed_block(block, x, c, layout: PackedLayout, parts=(None, None)) -> torch.Tensor:
    """A `DiTBlock` on packed tokens (N, D): per-token adaLN conditioning, attention within windows.

    `parts` are (attention_input, block_output) or compiled versions of them.
    """
    pre, post = parts if parts[0] is not None else (attention_input, block_output)
    mod = block.adaLN_modulation(c)
    attn = block.attn
    qkv = pre(block, x, mod, layout.sample)
    a = packed_attention(attn.attention, qkv.view(x.shape[0], 3, attn.num_heads, attn.head_dim), layout)
    return post(block, x, a, mod, layout.sample)


def fine_cells(grain_map: torch.Tensor, grains: int) -> int:
    """Number of fine (non-coarsest) cells of a grain map."""
    return int((grain_map > 0).sum()) * unit_cells(0, grains) ** 2


__all__ = [
    "PackedLayout",
    "SparseRefineNet",
    "blockdiag_mask",
    "fine_cells",
    "host_list",
    "packed_attention",
    "pad_windows",
]
