"""Grain predictors: conformance of every built-in, MaskGIT schedule, guidance and a tiny overfit."""

import math

import pytest
import torch

from d2it.errors import ConfigError, DataError
from d2it.registry import default_registry
from d2it.testing.grain_predictor import GrainPredictorConformance
from d2it_transformers.grain import cosine_schedule, unmasking_schedule
from d2it_transformers.plugin import GRAIN_PREDICTORS

TINY = {"depth": 2, "hidden_size": 32, "num_heads": 2, "steps": 4}


def make(name, overrides=None, grid=4, grains=2, num_classes=3, seed=0):
    torch.manual_seed(seed)
    reg = default_registry()
    return reg.create(
        "grain_predictor",
        name,
        dict(overrides or {}),
        grid=grid,
        grains=grains,
        num_classes=num_classes,
        attention=reg.create("attention", "sdpa"),
    )


def randomize(model, seed=0):
    """Replace zero-initialised weights so that logits depend on tokens and classes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


# -- conformance ----------------------------------------------------------------------------------


class TestDgtS(GrainPredictorConformance):
    name = "dgt-s"
    overrides = TINY


class TestDgtB(GrainPredictorConformance):
    name = "dgt-b"
    overrides = TINY


class TestDgtThreeGrains(GrainPredictorConformance):
    name = "dgt-s"
    overrides = TINY
    grains = 3
    num_classes = 1


class TestRandom(GrainPredictorConformance):
    name = "random"


class TestRandomThreeGrains(GrainPredictorConformance):
    name = "random"
    overrides = {"ratio": 0.3}
    grains = 3


class TestAllFine(GrainPredictorConformance):
    name = "all-fine"


class TestAllCoarse(GrainPredictorConformance):
    name = "all-coarse"


def test_registered_names_and_full_size_defaults():
    assert sorted(s.name for s in GRAIN_PREDICTORS) == ["all-coarse", "all-fine", "dgt-b", "dgt-s", "random"]
    assert set(default_registry().names("grain_predictor")) >= {"dgt-s", "dgt-b", "random", "all-fine", "all-coarse"}
    s = default_registry().get("grain_predictor", "dgt-s").make_config()
    b = default_registry().get("grain_predictor", "dgt-b").make_config()
    assert (s.depth, s.hidden_size, s.num_heads) == (12, 384, 6)
    assert (b.depth, b.hidden_size, b.num_heads) == (12, 768, 12)
    assert (s.class_dropout, s.steps, s.temperature, s.cfg_scale, s.mlp_ratio) == (0.1, 12, 1.0, 1.0, 4.0)


# -- fixed and random predictors ------------------------------------------------------------------


@pytest.mark.parametrize("grains", [2, 3])
def test_fixed_predictors_values(grains):
    classes = torch.tensor([0, 1])
    assert torch.all(make("all-fine", grains=grains).sample(classes) == grains - 1)
    assert torch.all(make("all-coarse", grains=grains).sample(classes) == 0)


def test_random_uses_only_extreme_grains_and_ratio():
    predictor = make("random", {"ratio": 0.3}, grid=32, grains=3)
    maps = predictor.sample(torch.zeros(4, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    assert set(maps.unique().tolist()) == {0, 2}
    assert abs((maps == 2).float().mean().item() - 0.3) < 0.03
    gen = torch.Generator().manual_seed(1)
    assert torch.all(predictor.sample(torch.zeros(2, dtype=torch.long), gen, ratio=0.0) == 0)
    assert torch.all(predictor.sample(torch.zeros(2, dtype=torch.long), gen, ratio=1.0) == 2)


def test_user_errors_are_d2it_errors():
    with pytest.raises(ConfigError, match="ratio"):
        make("random").sample(torch.tensor([0]), ratio=1.5)
    with pytest.raises(ConfigError, match="no sampling option 'steps'"):
        make("all-fine").sample(torch.tensor([0]), steps=3)
    with pytest.raises(ConfigError, match="ratio"):
        make("random", {"ratio": 2.0})
    with pytest.raises(ConfigError, match="divisible"):
        make("dgt-s", {**TINY, "num_heads": 3})
    model = make("dgt-s", TINY)
    with pytest.raises(ConfigError, match="class 4 is out of range"):
        model.sample(torch.tensor([0, 4]))
    with pytest.raises(DataError, match="shape"):
        model.loss(torch.zeros(2, 5, 5, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(DataError, match="values"):
        model.loss(torch.full((2, 4, 4), 2), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="temperature"):
        model.sample(torch.tensor([0]), temperature=-1.0)
    with pytest.raises(ConfigError, match="null class"):
        make("dgt-s", {**TINY, "class_dropout": 0.0}).sample(torch.tensor([0]), cfg_scale=2.0)


# -- MaskGIT schedule -----------------------------------------------------------------------------


def test_cosine_mask_schedule_values():
    r = torch.tensor([0.0, 1 / 3, 0.5, 2 / 3, 1.0])
    want = torch.tensor([1.0, math.sqrt(3) / 2, math.sqrt(0.5), 0.5, 0.0], dtype=torch.float64)
    assert torch.allclose(cosine_schedule(r), want, atol=1e-7)
    assert unmasking_schedule(64, 4) == [59, 45, 24, 0]  # floor(64·cos(π/2·t/4)) for t = 1, 2, 3, then 0
    steps12 = unmasking_schedule(256, 12)
    assert steps12[-1] == 0 and all(a > b for a, b in zip([256, *steps12], steps12))
    assert unmasking_schedule(3, 5) == [2, 1, 0, 0, 0]  # more steps than tokens: one token per step, then none


def test_loss_masks_by_cosine_schedule():
    model = make("dgt-s", TINY, grid=8)
    seen = []
    model.forward = lambda tokens, y: (seen.append(tokens), torch.zeros(*tokens.shape, 2, requires_grad=True))[1]
    maps = torch.zeros(2000, 8, 8, dtype=torch.long)
    model.loss(maps, torch.zeros(2000, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    ratio = (seen[0] == model.mask_id).float().mean(dim=1)
    assert ratio.min() >= 1 / 64  # at least one masked token
    # E[cos(πr/2)] = 2/π for r ~ U[0, 1); ceil adds at most one token
    assert abs(ratio.mean().item() - 2 / math.pi) < 0.02


# -- guidance -------------------------------------------------------------------------------------


def test_guidance_combines_conditional_and_null_logits():
    model = randomize(make("dgt-s", TINY)).eval()
    tokens, _ = model.example_inputs(3)
    y = torch.tensor([0, 1, 2])
    with torch.no_grad():
        cond = model(tokens, y)
        uncond = model(tokens, torch.full_like(y, 3))
        assert not torch.allclose(cond, uncond, atol=1e-3)
        assert torch.equal(model.guided_logits(tokens, y, 1.0), cond)
        assert torch.allclose(model.guided_logits(tokens, y, 0.0), uncond, atol=1e-5)
        assert torch.allclose(model.guided_logits(tokens, y, 2.5), uncond + 2.5 * (cond - uncond), atol=1e-4)


def test_guided_sampling_runs_and_scale_one_is_plain_conditional():
    model = randomize(make("dgt-s", TINY, grid=6)).eval()
    y = torch.tensor([0, 1, 2, 3])
    plain = model.sample(y, generator=torch.Generator().manual_seed(5))
    same = model.sample(y, generator=torch.Generator().manual_seed(5), cfg_scale=1.0)
    guided = model.sample(y, generator=torch.Generator().manual_seed(5), cfg_scale=4.0, steps=3, temperature=0.0)
    assert torch.equal(plain, same)
    assert guided.shape == (4, 6, 6) and guided.dtype == torch.int64 and set(guided.unique().tolist()) <= {0, 1}


# -- learning -------------------------------------------------------------------------------------


def test_grain_transformer_overfits_class_tied_maps():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest on a shared CPU
    try:
        torch.manual_seed(0)
        grid, batch, budget = 8, 16, 400
        targets = torch.randint(0, 2, (2, grid, grid), generator=torch.Generator().manual_seed(0))  # class c -> map c
        model = make("dgt-s", {"depth": 2, "hidden_size": 32, "num_heads": 2, "steps": 8}, grid=grid, num_classes=2)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, budget)
        y = torch.arange(batch) % 2
        eval_gen = torch.Generator().manual_seed(1)

        def eval_loss():
            """Masked-token loss without label dropout, averaged over four random masks."""
            model.eval()
            with torch.no_grad():
                value = sum(model.loss(targets[y], y, generator=eval_gen).item() for _ in range(4)) / 4
            model.train()
            return value

        model.train()
        first_below = None
        for step in range(1, budget + 1):
            opt.zero_grad()
            model.loss(targets[y], y).backward()
            opt.step()
            schedule.step()
            if first_below is None and step % 25 == 0 and eval_loss() < 0.05:
                first_below = step
        final = eval_loss()
        print(f"overfit: loss < 0.05 nats after {first_below} steps; after {budget} steps {final:.5f} nats")
        assert first_below is not None and final < 0.05
        model.eval()
        classes = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
        maps = model.sample(classes, generator=torch.Generator().manual_seed(3))
        assert torch.equal(maps, targets[classes])
    finally:
        torch.set_num_threads(threads)


def test_sampling_options_accept_command_line_strings():
    model = make("dgt-s", TINY)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    typed = model.sample(torch.tensor([0, 1]), gen(), steps=3, temperature=0.5, cfg_scale=2.0)
    text = model.sample(torch.tensor([0, 1]), gen(), steps="3", temperature="0.5", cfg_scale="2")
    assert torch.equal(typed, text)
    with pytest.raises(ConfigError, match="steps must be a positive integer, got 'many'"):
        model.sample(torch.tensor([0]), steps="many")
    predictor = make("random")
    assert torch.equal(
        predictor.sample(torch.tensor([0]), gen(), ratio="0.25"), predictor.sample(torch.tensor([0]), gen(), ratio=0.25)
    )


def test_loss_takes_its_draws_and_a_global_token_count():
    model = randomize(make("dgt-s", TINY, grid=4)).train()
    g = torch.Generator().manual_seed(1)
    maps, classes = torch.randint(0, 2, (4, 4, 4), generator=g), torch.tensor([0, 1, 2, 0])
    draws = (torch.rand(4, generator=g), torch.rand(4, 16, generator=g))
    keep = torch.zeros(4, dtype=torch.long)
    # given the draws a generator would make, the loss is the same
    gen = torch.Generator().manual_seed(5)
    drawn = (torch.rand(4, generator=gen), torch.rand(4, 16, generator=gen))
    same = model.loss(maps, classes, generator=torch.Generator().manual_seed(5), force_drop_ids=keep)
    assert torch.equal(model.loss(maps, classes, mask_draws=drawn, force_drop_ids=keep), same)
    # halves of a batch, each dividing by its share of the whole's masked tokens, average to the whole's loss
    whole = model.loss(maps, classes, mask_draws=draws, force_drop_ids=keep)
    total = model.masked_tokens(draws[0]).sum().float()
    halves = [
        model.loss(
            maps[i : i + 2],
            classes[i : i + 2],
            mask_draws=(draws[0][i : i + 2], draws[1][i : i + 2]),
            force_drop_ids=keep[i : i + 2],
            token_count=total / 2,
        )
        for i in (0, 2)
    ]
    assert torch.allclose((halves[0] + halves[1]) / 2, whole, atol=1e-6)
    dropped = model.loss(maps, classes, mask_draws=draws, force_drop_ids=torch.ones(4, dtype=torch.long))
    assert not torch.allclose(dropped, whole)
