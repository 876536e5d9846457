"""Conformance suite for samplers (kind `sampler`): shape, determinism, grain layout and oracle denoisers.

A sampler is an object with

    sample(model_fn, diffusion, shape, *, grain_map=None, steps=None, generator=None,
           noise=None, progress=True, device=None) -> x_0

where `model_fn(x, t)` returns ε (C channels, or 2C with learned variance) for original-schedule
steps `t`, `diffusion` is a `d2it_sampling.GaussianDiffusion` (the suite needs d2it-sampling
installed; it is skipped otherwise), `generator` is one torch.Generator or a list of B (one stream
per sample), and every noise draw follows `grain_map`'s layout (`diffusion.noise`).
Subclass, set `name` (and a small `overrides`), and pytest runs every check.
"""

import attrs
import pytest
import torch

from d2it.config import build_config, config_to_dict
from d2it.layout import project_to_layout
from d2it.registry import default_registry

T = 1000


def linear_betas() -> torch.Tensor:
    """DDPM's linear schedule (1e-4 .. 0.02 over 1000 steps), float64."""
    return torch.linspace(1e-4, 0.02, T, dtype=torch.float64)


def mixture_oracle(points: torch.Tensor, weights, alphas_cumprod: torch.Tensor):
    """The exact E[ε | x_t] for data drawn from the points (K, C, H, W) with probabilities `weights`.

    p(point k | x_t) ∝ w_k N(x_t; sqrt(ᾱ_t) x_k, (1 - ᾱ_t) I); E[x_0 | x_t] is the posterior
    average of the points and E[ε | x_t] = (x_t - sqrt(ᾱ_t) E[x_0 | x_t]) / sqrt(1 - ᾱ_t).
    """
    points = points.double()
    log_w = torch.log(torch.as_tensor(weights, dtype=torch.float64))

    def model_fn(x, t):
        ab = alphas_cumprod.to(x.device)[t].reshape(-1, 1, 1, 1)
        xd = x.double()
        diff = xd[:, None] - ab.sqrt()[:, None] * points.to(x.device)[None]  # (B, K, C, H, W)
        logits = log_w.to(x.device) - diff.pow(2).flatten(2).sum(-1) / (2 * (1 - ab.reshape(-1, 1)))
        post = torch.softmax(logits, dim=1)
        x0 = torch.einsum("bk,kchw->bchw", post, points.to(x.device))
        return ((xd - ab.sqrt() * x0) / (1 - ab).sqrt()).to(x.dtype)

    return model_fn


def elementwise_model(learn_sigma: bool):
    """A smooth model acting on each cell alone, so identical cells stay identical (respects any layout)."""

    def model_fn(x, t):
        scale = (t.to(x.dtype) / T).reshape(-1, 1, 1, 1)
        eps = torch.tanh(x) * (0.5 + 0.4 * scale)
        return torch.cat([eps, torch.tanh(0.5 * x) * 0.8], dim=1) if learn_sigma else eps

    return model_fn


class SamplerConformance:
    """Subclass with `name = "my-sampler"` and a small `overrides` dict."""

    name: str = ""
    overrides: dict = {}
    steps = 20  # steps of the shape / determinism / layout checks
    oracle_steps = 50  # steps of the oracle checks
    channels = 2
    size = 4  # finest latent grid (H = W)
    grains = 2
    batch = 4
    oracle_batch = 256
    point_tolerance = 0.05  # max |x - point| of a recovered sample
    proportion_tolerance = 0.1  # |fraction at a point - its probability|

    # -- helpers ----------------------------------------------------------------------------
    def make(self):
        return default_registry().create("sampler", self.name, dict(self.overrides))

    def make_diffusion(self, learn_sigma: bool = True):
        sampling = pytest.importorskip("d2it_sampling")
        return sampling.GaussianDiffusion(linear_betas(), learn_sigma=learn_sigma, grains=self.grains)

    def shape(self, batch=None):
        return (batch or self.batch, self.channels, self.size, self.size)

    def grain_map(self, seed: int = 0, batch=None):
        grid = self.size // 2 ** (self.grains - 1)
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, self.grains, (batch or self.batch, grid, grid), generator=g)

    def run(self, model_fn, diffusion, *, seed=0, steps=None, grain_map=None, batch=None, generator=None):
        if generator is None:
            generator = torch.Generator().manual_seed(seed)
        return self.make().sample(
            model_fn,
            diffusion,
            self.shape(batch),
            grain_map=grain_map,
            steps=steps or self.steps,
            generator=generator,
            progress=False,
            device="cpu",
        )

    # -- checks -----------------------------------------------------------------------------
    def test_output_shape_and_finite(self):
        for learn_sigma in (True, False):
            x = self.run(elementwise_model(learn_sigma), self.make_diffusion(learn_sigma))
            assert x.shape == self.shape()
            assert x.dtype == torch.float32
            assert torch.isfinite(x).all()

    def test_deterministic_for_a_seed(self):
        diffusion, model_fn = self.make_diffusion(), elementwise_model(True)
        a = self.run(model_fn, diffusion, seed=3)
        b = self.run(model_fn, diffusion, seed=3)
        c = self.run(model_fn, diffusion, seed=4)
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)

    def test_per_sample_generators_do_not_depend_on_the_batch(self):
        diffusion, model_fn = self.make_diffusion(), elementwise_model(True)
        gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(self.batch)]  # noqa: E731
        together = self.run(model_fn, diffusion, generator=gens())
        alone = [self.run(model_fn, diffusion, generator=[g], batch=1) for g in gens()]
        torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-5)

    def test_model_sees_original_timesteps(self):
        diffusion, seen = self.make_diffusion(), []
        inner = elementwise_model(True)

        def model_fn(x, t):
            seen.append(t.clone())
            return inner(x, t)

        self.run(model_fn, diffusion, steps=self.steps)
        assert seen, "the sampler never called the model"
        for t in seen:
            assert t.dtype == torch.long and t.shape == (self.batch,)
            assert 0 <= int(t.min()) and int(t.max()) < T
        assert len({int(t[0]) for t in seen}) <= self.steps
        assert max(int(t.max()) for t in seen) > T // 2, "sampling should start near the end of the schedule"

    def test_respects_grain_layout(self):
        diffusion, grain_map = self.make_diffusion(), self.grain_map(seed=1)
        inner, inputs = elementwise_model(True), []

        def model_fn(x, t):
            inputs.append(x.clone())
            return inner(x, t)

        x = self.run(model_fn, diffusion, grain_map=grain_map)
        for z in [*inputs, x]:
            torch.testing.assert_close(z, project_to_layout(z, grain_map, self.grains), rtol=0, atol=1e-5)
        # the fine cells are not tied together
        fine = (grain_map == self.grains - 1).repeat_interleave(2 ** (self.grains - 1), -1)
        fine = fine.repeat_interleave(2 ** (self.grains - 1), -2)[:, None].expand_as(x)
        if fine.any():
            assert x[fine].unique().numel() > fine.sum() // 2 ** (2 * (self.grains - 1))

    def test_oracle_single_point(self):
        diffusion = self.make_diffusion(learn_sigma=False)
        point = torch.linspace(-0.8, 0.8, self.channels * self.size * self.size).reshape(
            1, self.channels, self.size, self.size
        )
        model_fn = mixture_oracle(point, [1.0], diffusion.alphas_cumprod)
        x = self.run(model_fn, diffusion, steps=self.oracle_steps, batch=self.oracle_batch // 4)
        err = (x - point).abs().amax()
        assert err < self.point_tolerance, f"samples are {float(err):.4f} from the only data point"

    def test_oracle_two_point_mixture(self):
        diffusion = self.make_diffusion(learn_sigma=False)
        shape = (1, self.channels, self.size, self.size)
        # the rarer point lies nearer the origin, so a sampler that merely snaps noise to the nearest point fails
        points = torch.cat(
            [torch.full(shape, 0.3), -torch.linspace(0.5, 0.9, self.channels * self.size**2).reshape(shape)]
        )
        probs = (0.3, 0.7)
        model_fn = mixture_oracle(points, probs, diffusion.alphas_cumprod)
        x = self.run(model_fn, diffusion, seed=7, steps=self.oracle_steps, batch=self.oracle_batch)
        dist = (x[:, None] - points[None]).abs().flatten(2).amax(-1)  # (B, 2)
        nearest = dist.min(dim=1)
        assert nearest.values.max() < self.point_tolerance, (
            f"a sample is {float(nearest.values.max()):.4f} from both points"
        )
        fraction = (nearest.indices == 0).double().mean().item()
        assert abs(fraction - probs[0]) < self.proportion_tolerance, f"{fraction:.3f} of samples at the p=0.3 point"

    def test_config_round_trip(self):
        spec = default_registry().get("sampler", self.name)
        config = spec.make_config(dict(self.overrides))
        assert build_config(spec.config, config_to_dict(config)) == config
        assert attrs.has(type(config))
