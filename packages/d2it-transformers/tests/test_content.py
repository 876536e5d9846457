"""Dynamic Content Transformer: window attention, RefineNet, the copied-layout output and parameter counts."""

import pytest
import torch

from d2it.counting import count
from d2it.errors import ConfigError, D2itError
from d2it.layout import cell_grain, project_to_layout
from d2it.registry import default_registry
from d2it_transformers.content import DynamicContentTransformer, example_grain_map
from d2it_transformers.dit import Attention
from d2it_transformers.plugin import REFINERS
from d2it_transformers.refine import RefineNet, WindowAttention, window_partition, window_reverse

REFINER_NAMES = ["global", "none", "window16", "window2", "window4", "window8"]


def test_every_refiner_is_registered():
    dense = [n for n in default_registry().names("refiner") if not n.endswith("-sparse")]
    assert dense == REFINER_NAMES
    assert sorted(s.name for s in REFINERS if not s.name.endswith("-sparse")) == REFINER_NAMES


# --- window attention ---------------------------------------------------------------------------


@pytest.mark.parametrize(("grid", "window"), [((8, 8), (4, 4)), ((6, 8), (3, 2)), ((4, 4), (4, 4)), ((5, 5), (1, 1))])
def test_window_partition_and_reverse_are_inverses(grid, window):
    x = torch.randn(3, *grid, 5)
    windows = window_partition(x, window)
    assert windows.shape == (3 * (grid[0] // window[0]) * (grid[1] // window[1]), window[0] * window[1], 5)
    assert torch.equal(window_reverse(windows, window, grid), x)
    # the first window of the first sample is the top-left block in row-major order
    assert torch.equal(windows[0], x[0, : window[0], : window[1]].reshape(-1, 5))


def _copy_attention(src: Attention) -> Attention:
    dst = Attention(src.qkv.in_features, src.num_heads, src.attention)
    dst.load_state_dict(src.state_dict(), strict=False)
    return dst


@pytest.mark.parametrize("window", [2, 4])
def test_window_attention_equals_global_attention_per_window(window):
    torch.manual_seed(0)
    layer = WindowAttention(16, 2, None, (8, 8), window)
    reference = _copy_attention(layer)
    x = torch.randn(2, 64, 16)
    windows = window_partition(x.view(2, 8, 8, 16), (window, window))
    expected = window_reverse(reference(windows), (window, window), (8, 8)).reshape(2, 64, 16)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    # and it is not global attention
    assert not torch.allclose(layer(x), reference(x), atol=1e-4)


def test_window_attention_pads_and_masks_a_grid_it_does_not_divide():
    torch.manual_seed(0)
    layer = WindowAttention(16, 2, None, (6, 6), 4)
    assert layer.window == (4, 4) and layer.padded == (8, 8) and layer.windows == 4
    reference = _copy_attention(layer)
    x = torch.randn(2, 36, 16)
    grid = x.view(2, 6, 6, 16)
    out = layer(x).view(2, 6, 6, 16)
    for rows in (slice(0, 4), slice(4, 6)):
        for cols in (slice(0, 4), slice(4, 6)):
            block = grid[:, rows, cols]
            expected = reference(block.reshape(2, -1, 16)).view_as(block)
            torch.testing.assert_close(out[:, rows, cols], expected, rtol=1e-5, atol=1e-6)


def test_global_window_is_the_whole_grid():
    torch.manual_seed(0)
    layer = WindowAttention(16, 2, None, (4, 6), None)
    assert layer.window == (4, 6) and layer.windows == 1
    x = torch.randn(2, 24, 16)
    torch.testing.assert_close(layer(x), _copy_attention(layer)(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("region", "window"), [(2, 4), (2, 2), (4, 4), (2, None)])
def test_window_major_refinenet_equals_grid_order(region, window):
    kwargs = dict(input_size=8, in_channels=4, out_channels=8, region=region, hidden_size=32, num_heads=2, depth=2)
    torch.manual_seed(0)
    fast = RefineNet(**kwargs, window=window)
    assert fast.window_major
    slow = RefineNet(**kwargs, window=window, window_major=False)
    with torch.no_grad():
        for p in fast.parameters():  # non-zero everywhere, so the blocks and head matter
            p.copy_(torch.randn_like(p) * 0.1)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 4, 8, 8)
    tokens, c = torch.randn(2, (8 // region) ** 2, 32), torch.randn(2, 32)
    torch.testing.assert_close(fast(x, tokens, c), slow(x, tokens, c), rtol=1e-5, atol=1e-5)


def test_window_major_needs_windows_that_tile_the_grid_by_regions():
    kwargs = dict(input_size=8, in_channels=4, out_channels=8, hidden_size=32, num_heads=2, depth=1)
    assert not RefineNet(**kwargs, region=4, window=2).window_major  # a window smaller than a region
    assert not RefineNet(**{**kwargs, "input_size": 12}, region=2, window=8).window_major  # padded
    with pytest.raises(ConfigError, match="window-major"):
        RefineNet(**kwargs, region=4, window=2, window_major=True)


def test_global_refiner_equals_a_window_covering_the_grid(content, inputs, train):
    a = train(content("global"))
    b = content("window16")  # 16 > the 8x8 cell grid: one window
    b.load_state_dict(a.state_dict())
    x, t, y, gm = inputs(a, seed=1)
    torch.testing.assert_close(a(x, t, y, gm), b(x, t, y, gm), rtol=0, atol=0)


# --- the content model ---------------------------------------------------------------------------


@pytest.mark.parametrize("refine", REFINER_NAMES)
def test_zero_output_at_initialisation(content, inputs, refine):
    model = content(refine)
    assert isinstance(model, DynamicContentTransformer)
    out = model(*inputs(model))
    assert out.shape == (2, 8, 8, 8) and torch.count_nonzero(out) == 0


@pytest.mark.parametrize("refine", ["window4", "global", "none"])
def test_gradients_reach_every_parameter(content, inputs, refine):
    model = content(refine)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, t, y, gm = inputs(model)
    target = torch.randn(2, model.out_channels, 8, 8)
    # adaLN-Zero: step 1 moves the zero output layers, step 2 the zero gates, step 3 reaches everything
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x, t, y, gm), target).backward()
        opt.step()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not dead, f"no gradient reached {dead}"


def test_contract_attributes_and_example_inputs(content):
    model = content("window4")
    assert (model.in_channels, model.out_channels, model.learn_sigma, model.input_size) == (4, 8, True, 8)
    assert model.num_classes == 10 and model.grains == 2
    x, t, y, gm = model.example_inputs(3)
    assert x.shape == (3, 4, 8, 8) and gm.shape == (3, 4, 4) and gm.float().mean() == 0.5
    assert torch.equal(project_to_layout(x, gm, 2), x)  # the example latent obeys the copied layout
    assert torch.equal(model.example_inputs(3)[0], x)
    assert "64 cells" in model.count_note and "4 windows of 4x4" in model.count_note
    assert "no RefineNet" in content("none").count_note


@pytest.mark.parametrize("refine", ["window4", "none"])
def test_coarse_regions_hold_one_prediction(content, inputs, train, refine):
    model = train(content(refine))
    x, t, y, gm = inputs(model, seed=2)
    out = model(x, t, y, gm)
    assert out.abs().sum() > 0
    coarse = (cell_grain(gm, 2) == 0).unsqueeze(1).expand_as(out)
    pooled = out.view(2, 8, 4, 2, 4, 2).amax(dim=(3, 5)).repeat_interleave(2, -2).repeat_interleave(2, -1)
    assert torch.equal(out[coarse], pooled[coarse])
    fine = ~coarse
    assert not torch.equal(out[fine], pooled[fine])  # fine cells are free


def test_changing_the_grain_map_changes_the_output(content, inputs, train):
    model = train(content("window4"))
    x, t, y, gm = inputs(model, seed=3)
    other = gm.clone()
    other[:, 1, 2] = 1 - other[:, 1, 2]
    assert not torch.allclose(model(x, t, y, gm), model(x, t, y, other))


def test_all_coarse_map_ignores_the_refiner(content, inputs, train):
    reference = train(content("window4"))
    x, t, y, _ = inputs(reference, seed=4)
    coarse = torch.zeros(2, 4, 4, dtype=torch.long)
    expected = reference(x, t, y, coarse)
    assert expected.abs().sum() > 0
    for refine in REFINER_NAMES:
        model = content(refine, seed=5).eval()
        model.backbone.load_state_dict(reference.backbone.state_dict())
        torch.testing.assert_close(model(x, t, y, coarse), expected, rtol=0, atol=0)


def test_refinenet_is_a_correction_added_to_the_rough_prediction(content, inputs, train):
    model = train(content("window4"))
    bare = content("none")
    bare.backbone.load_state_dict(model.backbone.state_dict())
    x, t, y, gm = inputs(model, seed=6)
    fine = (cell_grain(gm, 2) == 1).unsqueeze(1).expand(-1, 8, -1, -1)
    correction = model.refiner(x, *model.backbone(x, t, y, gm)[:2])
    torch.testing.assert_close(model(x, t, y, gm)[fine], (bare.eval()(x, t, y, gm) + correction)[fine])


def test_math_and_sdpa_backends_agree(content, inputs, train):
    a = train(content("window4", attention="math"))
    b = content("window4", attention="sdpa")
    b.load_state_dict(a.state_dict())
    b.eval()
    args = inputs(a, seed=7)
    torch.testing.assert_close(a(*args), b(*args), rtol=1e-5, atol=1e-5)


def test_label_dropout_only_in_training(content, inputs, train):
    model = train(content("window4"))
    x, t, y, gm = inputs(model)
    assert torch.equal(model(x, t, y, gm), model(x, t, y, gm))
    null = torch.full_like(y, model.num_classes)
    assert not torch.allclose(model(x, t, y, gm), model(x, t, null, gm))


def test_forced_label_drop_replaces_the_random_one(content, inputs, train):
    model = train(content("window4"))
    x, t, y, gm = inputs(model)
    assert model.label_dropout == model.backbone.y_embedder.dropout_prob > 0
    null = torch.full_like(y, model.num_classes)
    with torch.no_grad():
        plain, dropped = model(x, t, y, gm), model(x, t, null, gm)
        model.train()  # training mode: only the forced labels drop, whatever the random draw would be
        torch.testing.assert_close(model(x, t, y, gm, force_drop_ids=torch.zeros_like(y)), plain)
        torch.testing.assert_close(model(x, t, y, gm, force_drop_ids=torch.ones_like(y)), dropped)
        half = torch.tensor([1, 0] * (len(y) // 2) + [0] * (len(y) % 2))
        mixed = model(x, t, y, gm, force_drop_ids=half)
        torch.testing.assert_close(mixed[half == 1], dropped[half == 1])
        torch.testing.assert_close(mixed[half == 0], plain[half == 0])


def test_three_grains(content, inputs, train):
    model = content("window4", grains=3, patch_size=4)
    assert model.grains == 3 and model.backbone.region == 4
    x, t, y, gm = inputs(model, batch=2)
    assert gm.shape == (2, 2, 2)
    assert torch.count_nonzero(model(x, t, y, gm)) == 0
    train(model)
    gm = torch.tensor([[[0, 1], [2, 1]], [[2, 2], [1, 0]]])
    out = model(*inputs(model, grain_map=gm)[:3], gm)
    assert out.abs().sum() > 0
    torch.testing.assert_close(project_to_layout(out, gm, 3), out)  # every code constant over its cells
    assert model.example_inputs(1)[3].unique().tolist() == [0, 1, 2]


def test_latent_sizes_divisible_by_the_region(content, inputs):
    model = content("window8", input_size=12)  # a 12x12 cell grid: windows padded to 16x16 and masked
    assert model.refiner.windows == 4
    x, t, y, gm = inputs(model)
    assert model(x, t, y, gm).shape == (2, 8, 12, 12)
    with pytest.raises(ConfigError, match="not divisible by the region size 2"):
        content("window4", input_size=7)


def test_refiner_depth_defaults_to_the_backbone_split():
    reg = default_registry()
    att = reg.create("attention", "sdpa")
    with torch.device("meta"):
        bb = reg.create("backbone", "dit-l", input_size=32, in_channels=4, num_classes=1000, grains=2, attention=att)
        assert len(reg.create("refiner", "window16", backbone=bb, attention=att).refiner.blocks) == 4
        assert len(reg.create("refiner", "window16", {"depth": 1}, backbone=bb, attention=att).refiner.blocks) == 1


def test_user_errors(content, inputs):
    reg = default_registry()
    att = reg.create("attention", "sdpa")
    plain = reg.create(
        "backbone",
        "dit-s",
        {"depth": 1, "hidden_size": 32, "num_heads": 2},
        input_size=8,
        in_channels=4,
        num_classes=10,
        grains=None,
        attention=att,
    )
    with pytest.raises(ConfigError, match="routed"):
        reg.create("refiner", "window16", backbone=plain, attention=att)
    model = content("none")
    x, t, y, gm = inputs(model)
    with pytest.raises(D2itError, match="needs a grain map"):
        model(x, t, y)
    with pytest.raises(D2itError, match="expected"):
        model(x, t, y, gm[:, :2])


def test_example_grain_map_is_a_checkerboard():
    assert example_grain_map(1, (2, 3), 2).tolist() == [[[0, 1, 0], [1, 0, 1]]]


@pytest.mark.parametrize(("size", "params_m"), [("dit-b", 135.8), ("dit-l", 467.3), ("dit-xl", 686.6)])
def test_full_size_parameter_counts(size, params_m):
    reg = default_registry()
    att = reg.create("attention", "sdpa")
    with torch.device("meta"):
        bb = reg.create("backbone", size, input_size=32, in_channels=4, num_classes=1000, grains=2, attention=att)
        model = reg.create("refiner", "window16", backbone=bb, attention=att)
    counts = count(model, *model.example_inputs(1))
    assert counts.params / 1e6 == pytest.approx(params_m, rel=1e-3)
    # the paper's 136M / 467M / 687M
    assert counts.params / 1e6 == pytest.approx({"dit-b": 136, "dit-l": 467, "dit-xl": 687}[size], rel=0.015)
    if size == "dit-b":
        assert round(counts.macs / 1e9, 2) == 35.10  # RefineNet on all 1024 cells, 4 windows of 16x16
