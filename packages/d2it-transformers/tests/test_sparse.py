"""Sparse RefineNet: equals the dense RefineNet with coarse keys masked, same weights, cost of the fine cells only."""

import pytest
import torch

from d2it.attention import sdpa_attention
from d2it.counting import count
from d2it.layout import cell_grain
from d2it.registry import default_registry
from d2it_transformers.refine import RefineNet, window_partition
from d2it_transformers.sparse import SparseRefineNet, blockdiag_mask, pad_windows

SPARSE = ["global-sparse", "window16-sparse", "window2-sparse", "window4-sparse", "window8-sparse"]
# (refiner, latent size, grains, backbone options): aligned and padded windows, and windows smaller than a region
CASES = [
    ("window4", 8, 2, {}),
    ("window2", 8, 2, {}),
    ("global", 8, 2, {}),
    ("window8", 12, 2, {}),
    ("window2", 16, 3, {"patch_size": 4}),
    ("window4", 16, 3, {"patch_size": 4}),
]


def test_sparse_refiners_are_registered():
    names = default_registry().names("refiner")
    assert set(SPARSE) <= set(names)
    for name in SPARSE:
        assert default_registry().get("refiner", name).config is default_registry().get("refiner", "window4").config


def _randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # non-zero everywhere, so every block and head matters
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def _mask_coarse_keys(refiner: RefineNet, grain_map, grains):
    """Make the dense refiner's attention ignore keys on coarse cells (for fine queries)."""
    fine = cell_grain(grain_map, grains) > 0
    for block in refiner.blocks:
        layer = block.attn
        (mh, mw), (ph, pw) = layer.window, layer.padded
        f = torch.nn.functional.pad(fine, (0, pw - fine.shape[2], 0, ph - fine.shape[1]))
        if layer.window_major:
            keys = f.view(f.shape[0], ph // mh, mh, pw // mw, mw).permute(0, 1, 3, 2, 4).reshape(-1, mh * mw)
        else:
            keys = window_partition(f[..., None], (mh, mw)).squeeze(-1)
        # fine queries see fine keys only; coarse queries (thrown away) see everything, so no row is empty
        allowed = keys[:, None, None, :] | ~keys[:, None, :, None]

        def masked(q, k, v, mask=None, allowed=allowed):
            return sdpa_attention(q, k, v, allowed if mask is None else allowed & mask)

        layer.attention = masked


@pytest.mark.parametrize(("refine", "size", "grains", "options"), CASES)
def test_sparse_equals_dense_with_coarse_keys_masked(content, inputs, refine, size, grains, options):
    sparse = _randomise(content(f"{refine}-sparse", input_size=size, grains=grains, **options))
    dense = content(refine, input_size=size, grains=grains, **options).eval()
    dense.load_state_dict(sparse.state_dict())  # interchangeable state dicts
    x, t, y, gm = inputs(sparse, batch=3, seed=1)
    _mask_coarse_keys(dense.refiner, gm, grains)
    fine = (cell_grain(gm, grains) > 0).unsqueeze(1).expand(-1, sparse.out_channels, -1, -1)
    with torch.no_grad():
        routed = sparse.backbone(x, t, y, gm)
        got = sparse.refiner(x, routed.tokens, routed.c, gm)
        want = dense.refiner(x, routed.tokens, routed.c)
        torch.testing.assert_close(got[fine], want[fine], rtol=1e-5, atol=1e-5)
        assert torch.count_nonzero(got[~fine]) == 0  # coarse cells get no correction
        assert got[fine].abs().mean() > 0.1
        torch.testing.assert_close(sparse(x, t, y, gm), dense(x, t, y, gm), rtol=1e-5, atol=1e-5)


def test_masking_matters(content, inputs):
    """The unmasked dense refiner differs on fine cells, so the equality above tests the masking."""
    sparse = _randomise(content("window4-sparse"))
    dense = content("window4").eval()
    dense.load_state_dict(sparse.state_dict())
    x, t, y, gm = inputs(sparse, seed=2)
    with torch.no_grad():
        assert not torch.allclose(sparse(x, t, y, gm), dense(x, t, y, gm), atol=1e-3)


def test_state_dicts_are_interchangeable(content):
    sparse, dense = content("window16-sparse"), content("window16", seed=3)
    assert sparse.state_dict().keys() == dense.state_dict().keys()
    sparse.load_state_dict(dense.state_dict())  # strict both ways
    dense.load_state_dict(sparse.state_dict())
    assert isinstance(sparse.refiner, SparseRefineNet) and isinstance(sparse.refiner, RefineNet)


def test_zero_output_at_initialisation_and_all_coarse_maps(content, inputs, train):
    model = content("window4-sparse")
    x, t, y, gm = inputs(model)
    assert torch.count_nonzero(model(x, t, y, gm)) == 0
    train(model)
    coarse = torch.zeros_like(gm)
    routed = model.backbone(x, t, y, coarse)
    assert torch.count_nonzero(model.refiner(x, routed.tokens, routed.c, coarse)) == 0
    bare = content("none")
    bare.backbone.load_state_dict(model.backbone.state_dict())
    torch.testing.assert_close(model(x, t, y, coarse), bare.eval()(x, t, y, coarse), rtol=0, atol=0)


def test_gradients_match_the_masked_dense_refiner(content, inputs):
    sparse = _randomise(content("window4-sparse"), seed=4).train()
    dense = content("window4").train()
    dense.load_state_dict(sparse.state_dict())
    x, t, y, gm = inputs(sparse, seed=5)
    _mask_coarse_keys(dense.refiner, gm, 2)
    torch.manual_seed(0)  # label dropout draws the same labels for both
    sparse(x, t, y, gm).square().mean().backward()
    torch.manual_seed(0)
    dense(x, t, y, gm).square().mean().backward()
    for (name, a), (_, b) in zip(sparse.named_parameters(), dense.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_macs_count_the_fine_cells_only(content):
    sparse, dense = content("window4-sparse"), content("window4")
    dense.load_state_dict(sparse.state_dict())
    x, t, y, _ = sparse.example_inputs(2)
    fine = torch.ones(2, 4, 4, dtype=torch.long)
    assert count(sparse, x, t, y, fine).macs == count(dense, x, t, y, fine).macs  # all fine: the same work
    half = torch.zeros(2, 4, 4, dtype=torch.long)
    half[:, :, ::2] = 1  # every other region column: 2 of the 4 regions of each 4x4-cell window
    s, d = count(sparse, x, t, y, half), count(dense, x, t, y, half)
    s_bb, d_bb = count(sparse.backbone, x, t, y, half), count(dense.backbone, x, t, y, half)
    assert s_bb.macs == d_bb.macs
    refine_s, refine_d = s.macs - s_bb.macs, d.macs - d_bb.macs
    assert refine_s < 0.55 * refine_d
    # attention: 2 blocks x 8 windows of 8 cells x 8 keys x 2 heads x (16 + 16)
    assert s.attention_macs - s_bb.attention_macs == 2 * 8 * 8 * 8 * 2 * 32
    ragged = torch.tensor([[[1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 0]]] * 2)
    # windows of 4, 8, 8 and 4 fine cells, padded to 8: only real query-key pairs count
    pairs = 2 * sum(n * n for n in (4, 8, 8, 4)) * 2 * 32 * 2
    r, r_bb = count(sparse, x, t, y, ragged), count(sparse.backbone, x, t, y, ragged)
    assert r.attention_macs - r_bb.attention_macs == pairs


def test_count_note_says_how_many_cells(content):
    note = content("window4-sparse").count_note
    assert "fine cells only" in note and "32 of the 64 cells" in note


def test_padding_and_blockdiag_masks():
    dest, key_mask = pad_windows([2, 3, 1], "cpu")
    assert dest.tolist() == [0, 1, 3, 4, 5, 6]
    assert key_mask.view(3, 3).tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    assert pad_windows([4, 4], "cpu") == (None, None)
    mask = blockdiag_mask([2, 1])
    assert mask.tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def test_blockdiag_attention_equals_padded_windows():
    torch.manual_seed(0)
    kwargs = dict(input_size=8, in_channels=4, out_channels=8, region=2, hidden_size=32, num_heads=2, depth=1)
    model = SparseRefineNet(**kwargs, window=4)
    gm = torch.tensor([[[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 0, 0], [0, 1, 0, 0]]])
    layout = model.layout(gm)
    assert layout.seqlens == [4, 12, 12]  # the bottom-right window is all coarse: no sequence
    n = sum(layout.seqlens)
    qkv = torch.randn(n, 3, 2, 16)
    from d2it_transformers.sparse import packed_attention

    got = packed_attention(sdpa_attention, qkv, layout)
    q, k, v = qkv.permute(1, 2, 0, 3)[:, None].unbind(0)
    want = sdpa_attention(q, k, v, blockdiag_mask(layout.seqlens)).squeeze(0).transpose(0, 1).reshape(n, 32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
