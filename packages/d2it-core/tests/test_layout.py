"""Grain layout helpers: neighbour copying, pooling and multi-grained noise."""

import torch

from d2it import layout


def grain_map():
    return torch.tensor([[[0, 1], [1, 0]]])  # 2x2 regions, k = 2


def test_cell_grain_and_masks():
    cells = layout.cell_grain(grain_map(), 2)
    assert cells.shape == (1, 4, 4) and cells[0, 0, 0] == 0 and cells[0, 0, 3] == 1
    masks = layout.grain_masks(grain_map(), 2)
    assert masks.shape == (1, 2, 4, 4) and torch.equal(masks.sum(1), torch.ones(1, 4, 4))


def test_neighbour_copy_takes_each_grains_codes():
    coarse = torch.arange(4.0).reshape(1, 1, 2, 2)
    fine = 10 + torch.arange(16.0).reshape(1, 1, 4, 4)
    z = layout.neighbour_copy([coarse, fine], grain_map())
    assert torch.equal(z[0, 0, :2, :2], torch.zeros(2, 2))  # coarse code 0 copied to 4 cells
    assert torch.equal(z[0, 0, :2, 2:], fine[0, 0, :2, 2:])  # fine region keeps its cells
    assert torch.equal(z[0, 0, 2:, 2:], torch.full((2, 2), 3.0))


def test_pool_inverts_upsample_and_projection_is_idempotent():
    x = torch.randn(2, 3, 8, 8)
    for g in range(3):
        codes = layout.pool_codes(x, g, 3)
        assert torch.allclose(layout.pool_codes(layout.upsample_codes(codes, g, 3), g, 3), codes)
    gm = torch.randint(0, 3, (2, 2, 2))
    once = layout.project_to_layout(x, gm, 3)
    assert torch.allclose(layout.project_to_layout(once, gm, 3), once)


def test_multigrain_noise_layout_and_variance():
    gm = torch.randint(0, 2, (64, 4, 4), generator=torch.Generator().manual_seed(0))
    noise = layout.multigrain_noise(gm, 2, 4, generator=torch.Generator().manual_seed(1))
    assert noise.shape == (64, 4, 8, 8)
    assert torch.equal(layout.project_to_layout(noise, gm, 2), noise) or torch.allclose(
        layout.project_to_layout(noise, gm, 2), noise, atol=1e-6
    )
    assert abs(noise.var().item() - 1) < 0.05 and abs(noise.mean().item()) < 0.05
    again = layout.multigrain_noise(gm, 2, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noise, again)


def test_per_grain_mean():
    values = torch.zeros(1, 2, 4, 4)
    values[:, :, :2, 2:] = 2.0  # the fine region top-right
    values[:, :, 2:, :2] = 4.0  # the fine region bottom-left
    means = layout.per_grain_mean(values, grain_map(), 2)
    assert torch.allclose(means, torch.tensor([0.0, 3.0]))
    only_coarse = layout.per_grain_mean(values, torch.zeros(1, 2, 2, dtype=torch.long), 2)
    assert only_coarse[1] == 0


def test_per_grain_mean_over_a_split_batch_with_shares_of_the_global_counts():
    g = torch.Generator().manual_seed(0)
    maps = torch.randint(0, 2, (4, 2, 2), generator=g)
    maps[:2] = 0  # the first half has no fine region at all
    values = torch.rand(4, 3, 4, 4, generator=g)
    whole = layout.per_grain_mean(values, maps, 2)
    counts = layout.grain_cell_counts(maps, 2)
    assert counts.tolist() == layout.grain_masks(maps, 2).sum(dim=(0, 2, 3)).tolist() and counts.sum() == 64
    assert torch.equal(layout.per_grain_mean(values, maps, 2, counts), whole)
    halves = [layout.per_grain_mean(values[i : i + 2], maps[i : i + 2], 2, counts / 2) for i in (0, 2)]
    assert torch.allclose((halves[0] + halves[1]) / 2, whole, atol=1e-6)
    assert not torch.allclose(
        (layout.per_grain_mean(values[:2], maps[:2], 2) + layout.per_grain_mean(values[2:], maps[2:], 2)) / 2, whole
    )
