"""Conformance suite for grain predictors."""

import math

import torch

from d2it.config import build_config, config_to_dict
from d2it.registry import default_registry


class GrainPredictorConformance:
    """Subclass with `name = "my-predictor"` and a tiny `overrides` dict; set `grid`, `grains`, `num_classes`."""

    name: str = ""
    overrides: dict = {}
    grid = 4
    grains = 2
    num_classes = 3
    batch = 3

    def make(self, seed: int = 0):
        torch.manual_seed(seed)
        return default_registry().create(
            "grain_predictor",
            self.name,
            dict(self.overrides),
            grid=self.grid,
            grains=self.grains,
            num_classes=self.num_classes,
            attention=default_registry().create("attention", "sdpa"),
        )

    def classes(self) -> torch.Tensor:
        return torch.arange(self.batch) % self.num_classes

    def grain_maps(self, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, self.grains, (self.batch, self.grid, self.grid), generator=g)

    def test_sample_shape_dtype_and_range(self):
        predictor = self.make()
        maps = predictor.sample(self.classes(), generator=torch.Generator().manual_seed(0))
        assert maps.shape == (self.batch, self.grid, self.grid)
        assert maps.dtype == torch.int64
        assert int(maps.min()) >= 0 and int(maps.max()) <= self.grains - 1

    def test_has_interface_attributes(self):
        predictor = self.make()
        assert isinstance(predictor.trainable, bool)
        assert isinstance(getattr(predictor, "stochastic", False), bool)
        if predictor.trainable:
            assert callable(predictor.loss) and callable(predictor.example_inputs)

    def test_same_seed_same_maps(self):
        predictor = self.make()
        a = predictor.sample(self.classes(), generator=torch.Generator().manual_seed(7))
        torch.manual_seed(123)  # the global RNG must not matter
        b = predictor.sample(self.classes(), generator=torch.Generator().manual_seed(7))
        assert torch.equal(a, b)

    def test_different_seeds_differ_when_stochastic(self):
        predictor = self.make()
        draws = [predictor.sample(self.classes(), generator=torch.Generator().manual_seed(s)) for s in range(4)]
        distinct = {tuple(d.flatten().tolist()) for d in draws}
        if getattr(predictor, "stochastic", False):
            assert len(distinct) > 1, "a stochastic predictor gave the same maps for four seeds"
        else:
            assert len(distinct) == 1, "a deterministic predictor gave different maps for different seeds"

    def test_loss_is_finite_scalar(self):
        predictor = self.make()
        if not predictor.trainable:
            return
        predictor.train()
        loss = predictor.loss(self.grain_maps(), self.classes())
        assert loss.ndim == 0 and loss.dtype.is_floating_point
        assert math.isfinite(loss.item())

    def test_gradients_reach_every_parameter(self):
        predictor = self.make()
        if not predictor.trainable:
            return
        predictor.train()
        opt = torch.optim.Adam(predictor.parameters(), lr=1e-3)
        reached = set()
        # zero-initialised (adaLN-Zero) layers pass gradient on only after a few steps
        for step in range(4):
            opt.zero_grad()
            predictor.loss(self.grain_maps(step), self.classes()).backward()
            reached |= {n for n, p in predictor.named_parameters() if p.grad is not None and p.grad.any()}
            opt.step()
        dead = [n for n, p in predictor.named_parameters() if p.requires_grad and n not in reached]
        assert not dead, f"no gradient reached {dead}"

    def test_example_inputs_run_forward(self):
        predictor = self.make()
        if not predictor.trainable:
            return
        predictor.eval()
        with torch.no_grad():
            predictor(*predictor.example_inputs(2))

    def test_config_round_trip(self):
        spec = default_registry().get("grain_predictor", self.name)
        config = spec.make_config(dict(self.overrides))
        assert build_config(spec.config, config_to_dict(config)) == config
