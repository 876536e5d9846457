"""Conformance suite for samplers (kind `sampler`): shape, determinism, grain layout and oracle denoisers.

A sampler is an object with

    sample(model_fn, diffusion, shape, *, grain_map=None, steps=None, generator=None,
           noise=None, progress=True, device=None) -> x_0

where `model_fn(x, t)` returns ε (C channels, or 2C with learned variance) for original-schedule
steps `t`, `diffusion` is a `d2it_sampling.GaussianDiffusion` (the suite needs d2it-sampling
installed; it is skipped otherwise), `generator` is one torch.Generator or a list of B (one stream
per sample), and every noise draw follows `grain_map`'s layout (`diffusion.noise`).
Subclass, set `name` (and a small `overrides`), and pytest runs every check.

Convergence order: a sampler declares `order` (its class attribute or property; 0 for a stochastic
one). On Gaussian data N(μ, s²) the ε-prediction and the probability-flow ODE are exact in closed
form (`gaussian_oracle`, `gaussian_flow_solution`), so the error of a deterministic sampler must
fall by about 2**order each time the steps double: on its own steps (through `sample`) and, for a
`d2it_sampling.Sampler`, on uneven steps whose sizes alternate 1:2 in log-SNR (through `run`), the
case where a multistep method's step-size ratio matters.
"""

import math

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


def log_snr_linear_betas(num_timesteps: int = 10_000, log_snr_max: float = 12.0, log_snr_min: float = -12.0):
    """Betas whose log-SNR 2λ_t falls linearly from `log_snr_max` to `log_snr_min`: a fine, even grid in λ."""
    lam = torch.linspace(log_snr_max / 2, log_snr_min / 2, num_timesteps, dtype=torch.float64)
    abar = torch.sigmoid(2 * lam)
    return 1.0 - abar / torch.cat([abar.new_ones(1), abar[:-1]])


def gaussian_oracle(mean: float, std: float, alphas_cumprod: torch.Tensor):
    """The exact E[ε | x_t] for data N(mean, std²) in every element.

    x_t ~ N(sqrt(ᾱ) μ, ᾱ s² + 1 - ᾱ), so E[ε | x_t] = sqrt(1 - ᾱ) (x_t - sqrt(ᾱ) μ) / (ᾱ s² + 1 - ᾱ).
    """

    def model_fn(x, t):
        ab = alphas_cumprod.to(x.device)[t].reshape(-1, 1, 1, 1)
        xd = x.double()
        return ((1 - ab).sqrt() * (xd - ab.sqrt() * mean) / (ab * std**2 + 1 - ab)).to(x.dtype)

    return model_fn


def gaussian_flow_solution(x_start, mean: float, std: float, abar_start: float, abar_end: float) -> torch.Tensor:
    """x̂_0 at the end of the exact probability-flow ODE for data N(mean, std²), float64.

    In y = x / sqrt(ᾱ), σ² = (1 - ᾱ) / ᾱ the flow is dy/dσ = (y - D(y, σ)) / σ with the affine
    denoiser D = μ + s² (y - μ) / (s² + σ²), whose solution is y(σ) - μ ∝ sqrt(s² + σ²). From x_start
    at ᾱ_start the flow runs to the last kept step ᾱ_end, then x̂_0 = D there (every sampler's last step).
    """
    sig2_start, sig2_end = (1 - abar_start) / abar_start, (1 - abar_end) / abar_end
    y = x_start.double() / math.sqrt(abar_start)
    y_end = mean + (y - mean) * math.sqrt((std**2 + sig2_end) / (std**2 + sig2_start))
    return mean + std**2 / (std**2 + sig2_end) * (y_end - mean)


def uneven_steps(n: int, total: int, ratio: float = 2.0) -> list[int]:
    """n steps of a `total`-step process from 0 to total-1 whose sizes alternate 1 : ratio."""
    sizes = torch.tensor([1.0 if i % 2 == 0 else ratio for i in range(n - 1)], dtype=torch.float64)
    edges = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
    return sorted({round(float(v)) for v in edges / edges[-1] * (total - 1)})


def observed_order(errors) -> float:
    """The mean of log2(e_k / e_{k+1}) over the last two doublings of the steps."""
    return 0.5 * math.log2(errors[-3] / errors[-1])


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
    order_steps = (25, 50, 100, 200)  # step counts of the convergence-order check (each double the last)
    uneven_order_steps = (20, 40, 80, 160)
    order_slack = 0.25  # the observed order may fall this far below the declared one
    gaussian = (0.3, 0.5)  # mean, std of the Gaussian data
    gaussian_steps = 100  # steps and batch of the Gaussian distribution check
    gaussian_batch = 64

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

    def declared_order(self) -> int:
        sampler = self.make()
        order = getattr(sampler, "order", None)
        assert isinstance(order, int) and order >= 0, "a sampler must declare its convergence order (0: stochastic)"
        return order

    def _order_errors(self, run, diffusion, grids):
        """Max |x̂_0 - exact| for each grid of kept steps; `run(diffusion, kept, x_T, steps)` samples."""
        mean, std = self.gaussian
        x_start = torch.randn(self.shape(), generator=torch.Generator().manual_seed(11))
        ac = diffusion.alphas_cumprod
        errors = []
        for steps, kept in grids:
            x = run(diffusion, kept, x_start, steps)
            exact = gaussian_flow_solution(x_start, mean, std, float(ac[kept[-1]]), float(ac[kept[0]]))
            errors.append(float((x.double() - exact).abs().max()))
        return errors

    def test_convergence_order_on_its_own_steps(self):
        order = self.declared_order()
        if order == 0:
            pytest.skip("a stochastic sampler has no ODE convergence order")
        diffusion, sampler = self.make_diffusion(learn_sigma=False), self.make()
        model_fn = gaussian_oracle(*self.gaussian, diffusion.alphas_cumprod)
        if hasattr(sampler, "timesteps"):
            grids = [(n, sampler.timesteps(diffusion, n)) for n in self.order_steps]
        else:
            grids = [(n, [0, T - 1]) for n in self.order_steps]  # uniform steps end at 0 and T-1

        def run(diffusion, kept, x_start, steps):
            return sampler.sample(model_fn, diffusion, x_start.shape, noise=x_start, steps=steps, progress=False)

        errors = self._order_errors(run, diffusion, grids)
        observed = observed_order(errors)
        assert observed >= order - self.order_slack, (
            f"declared order {order}, observed {observed:.2f} (errors {[f'{e:.2e}' for e in errors]})"
        )

    def test_convergence_order_on_uneven_steps(self):
        order = self.declared_order()
        if order == 0:
            pytest.skip("a stochastic sampler has no ODE convergence order")
        sampler = self.make()
        if not hasattr(sampler, "run"):
            pytest.skip("only a d2it_sampling.Sampler can be run on given steps")
        sampling = pytest.importorskip("d2it_sampling")
        diffusion = sampling.GaussianDiffusion(log_snr_linear_betas(), learn_sigma=False, grains=self.grains)
        model_fn = gaussian_oracle(*self.gaussian, diffusion.alphas_cumprod)
        grids = [(n, uneven_steps(n, diffusion.num_timesteps)) for n in self.uneven_order_steps]

        def run(diffusion, kept, x_start, steps):
            g = torch.Generator().manual_seed(0)
            return sampler.run(model_fn, diffusion.subset(kept), x_start, generator=g, progress=False)

        errors = self._order_errors(run, diffusion, grids)
        observed = observed_order(errors)
        assert observed >= order - self.order_slack, (
            f"declared order {order}, observed {observed:.2f} on steps alternating 1:2 in log-SNR "
            f"(errors {[f'{e:.2e}' for e in errors]})"
        )

    def test_gaussian_data_distribution(self):
        diffusion = self.make_diffusion(learn_sigma=False)
        mean, std = self.gaussian
        model_fn = gaussian_oracle(mean, std, diffusion.alphas_cumprod)
        x = self.run(model_fn, diffusion, seed=5, steps=self.gaussian_steps, batch=self.gaussian_batch)
        assert abs(float(x.mean()) - mean) < 0.05, f"sample mean {float(x.mean()):.3f}, data mean {mean}"
        assert abs(float(x.std()) - std) < 0.05, f"sample std {float(x.std()):.3f}, data std {std}"

    def test_config_round_trip(self):
        spec = default_registry().get("sampler", self.name)
        config = spec.make_config(dict(self.overrides))
        assert build_config(spec.config, config_to_dict(config)) == config
        assert attrs.has(type(config))
