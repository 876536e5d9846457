"""Conformance suite for backbones (plain DiT mode: grains=None)."""

import torch

from d2it.config import build_config, config_to_dict
from d2it.registry import default_registry


class BackboneConformance:
    """Subclass with `name = "my-backbone"` and a tiny `overrides` dict."""

    name: str = ""
    overrides: dict = {}
    input_size = 8
    in_channels = 4
    num_classes = 10
    batch = 2

    def make(self, seed: int = 0):
        torch.manual_seed(seed)
        return default_registry().create(
            "backbone",
            self.name,
            dict(self.overrides),
            input_size=self.input_size,
            in_channels=self.in_channels,
            num_classes=self.num_classes,
            grains=None,
            attention=default_registry().create("attention", "sdpa"),
        )

    def inputs(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(self.batch, self.in_channels, self.input_size, self.input_size, generator=g)
        t = torch.randint(0, 1000, (self.batch,), generator=g)
        y = torch.randint(0, self.num_classes, (self.batch,), generator=g)
        return x, t, y

    def test_output_shape(self):
        model = self.make()
        x, t, y = self.inputs()
        out = model(x, t, y)
        assert out.shape == (self.batch, model.out_channels, self.input_size, self.input_size)
        assert model.out_channels == self.in_channels * (2 if model.learn_sigma else 1)

    def test_zero_output_at_initialisation(self):
        model = self.make()
        x, t, y = self.inputs()
        assert torch.count_nonzero(model(x, t, y)) == 0

    def test_gradients_reach_every_parameter(self):
        model = self.make()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x, t, y = self.inputs()
        target = torch.randn(self.batch, model.out_channels, self.input_size, self.input_size)
        # adaLN-Zero: the output layer, then the gates, then the blocks behind them start moving
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x, t, y), target).backward()
            opt.step()
        dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
        assert not dead, f"no gradient reached {dead}"

    def test_deterministic_under_seed(self):
        a, b = self.make(seed=3), self.make(seed=3)
        for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(pa, pb), na
        x, t, y = self.inputs()
        opt = torch.optim.SGD(a.parameters(), lr=0.1)
        out = a(x, t, y)
        torch.nn.functional.mse_loss(out, torch.ones_like(out)).backward()
        opt.step()
        torch.manual_seed(1)
        assert torch.equal(a(x, t, y), a(x, t, y))

    def test_config_round_trip(self):
        spec = default_registry().get("backbone", self.name)
        config = spec.make_config(dict(self.overrides))
        assert build_config(spec.config, config_to_dict(config)) == config
