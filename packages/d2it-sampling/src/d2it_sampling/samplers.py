"""Samplers: DDPM ancestral sampling and DDIM, as small functions plus registered sampler objects.

Every sampling function has one signature (k-diffusion style):

    sample_x(model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True, **options) -> x_0

model_fn(x, t) -> model output: x (B, C, H, W) the current latent, t (B,) int64 steps of the
    *original* schedule (the diffusion maps respaced steps back); returns C channels of ε, or 2C
    (ε, then the learned-variance values) when `diffusion.learn_sigma`. Conditioning (classes,
    grain map, classifier-free guidance) is bound into it by the caller (`d2it_sampling.guidance`).
diffusion: a `GaussianDiffusion` already respaced to the steps to take (its num_timesteps).
x: the starting noise x_T. grain_map: (B, h, w) int64 or None; every noise draw uses its layout.
generator: one torch.Generator, a list of B (one per sample) or None (the global RNG).

The loops keep everything on the device: no `.item()` or host copies per step.
"""

import abc
import sys

import attrs
import torch
from tqdm.auto import tqdm

from d2it.errors import ConfigError


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """A tqdm bar (over `iterable`, or counting to `total=`), shown only when `enabled` and stdout is a terminal."""
    show = bool(enabled) and sys.stdout.isatty()
    return tqdm(iterable, disable=not show, **kwargs)


def _timesteps(diffusion, x):
    """The steps to visit, last first, each as a (B,) int64 tensor on x's device (built once, no host sync later)."""
    n = diffusion.num_timesteps
    all_t = torch.arange(n, device=x.device, dtype=torch.long)
    return [(i, all_t[i].expand(x.shape[0])) for i in reversed(range(n))]


@torch.no_grad()
def sample_ddpm(model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True, clip_denoised=False):
    """Ancestral sampling (DDPM, Ho et al. 2020, Algorithm 2) on the diffusion's (respaced) steps.

    x_{t-1} = μ_θ(x_t, t) + σ_t z with z ~ N(0, I) in the grain layout, and no noise at the last
    step; σ_t is learned (Improved DDPM) or fixed by the diffusion, as in ADM's `p_sample_loop`.
    """
    steps = _timesteps(diffusion, x)
    for i, t in progress_bar(steps, enabled=progress, desc="ddpm", leave=False):
        out = diffusion.p_mean_variance(model_fn, x, t, clip_denoised=clip_denoised)
        if i > 0:
            z = diffusion.noise(x.shape, grain_map=grain_map, generator=generator, device=x.device, dtype=x.dtype)
            x = out["mean"] + torch.exp(0.5 * out["log_variance"]) * z
        else:
            x = out["mean"]
    return x


@torch.no_grad()
def sample_ddim(model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True, eta=0.0, clip_denoised=False):
    """DDIM (Song et al. 2021, eq. 12) on the diffusion's (respaced) steps; `eta` = 0 is deterministic.

    x_{t-1} = sqrt(ᾱ_{t-1}) x̂_0 + sqrt(1 - ᾱ_{t-1} - σ_t²) ε̂ + σ_t z with
    σ_t = η sqrt((1 - ᾱ_{t-1}) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_{t-1}); η = 1 matches DDPM's posterior variance.
    """
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f"ddim eta must be between 0 and 1, got {eta}")
    ac, acp = diffusion.alphas_cumprod, diffusion.alphas_cumprod_prev  # float64 on the CPU: no device sync
    for i, t in progress_bar(_timesteps(diffusion, x), enabled=progress, desc="ddim", leave=False):
        out = diffusion.p_mean_variance(model_fn, x, t, clip_denoised=clip_denoised)
        eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
        a, a_prev = float(ac[i]), float(acp[i])
        sigma = eta * ((1 - a_prev) / (1 - a)) ** 0.5 * (1 - a / a_prev) ** 0.5
        x = out["pred_xstart"] * a_prev**0.5 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if i > 0 and sigma > 0:
            x = x + sigma * diffusion.noise(
                x.shape, grain_map=grain_map, generator=generator, device=x.device, dtype=x.dtype
            )
    return x


# -- registered sampler objects ----------------------------------------------------------------
@attrs.frozen
class DDPMConfig:
    """Options of the `ddpm` sampler."""

    steps: int = 250
    clip_denoised: bool = False


@attrs.frozen
class DDIMConfig:
    """Options of the `ddim` sampler."""

    steps: int = 50
    eta: float = 0.0
    clip_denoised: bool = False


class Sampler(abc.ABC):
    """A registered sampler: respaces the diffusion, draws x_T and runs its sampling function.

    Subclasses set `name` and implement `run(model_fn, diffusion, x, *, grain_map, generator, progress)`.
    """

    name = ""

    def __init__(self, config):
        if config.steps < 1:
            raise ConfigError(f"sampler {self.name} needs steps >= 1, got {config.steps}")
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    def sample(
        self,
        model_fn,
        diffusion,
        shape,
        *,
        grain_map=None,
        steps=None,
        generator=None,
        noise=None,
        progress: bool = True,
        device=None,
    ) -> torch.Tensor:
        """Draw x_0 of `shape` (B, C, H, W).

        model_fn(x, t) -> output: see the module docstring (t are original-schedule steps).
        diffusion: the full (usually 1000-step) `GaussianDiffusion`; it is respaced to `steps`
            (an int, "a,b,c" sections or "ddimN"; default this sampler's `steps` option).
        grain_map: (B, h, w) int64 laying out every noise draw, or None for i.i.d. noise.
        generator: a torch.Generator on `device`, a list of B of them (per-sample streams), or None.
        noise: the starting x_T (default: drawn in the grain layout from `generator`).
        device: where to sample (default the grain map's device, else the CPU).
        Returns x_0 in float32 on `device`.
        """
        steps = self.config.steps if steps is None else steps
        spaced = diffusion.respace(steps)
        if device is None:
            device = grain_map.device if grain_map is not None else (noise.device if noise is not None else "cpu")
        device = torch.device(device)
        if grain_map is not None:
            grain_map = grain_map.to(device)
        if noise is None:
            x = spaced.noise(shape, grain_map=grain_map, generator=generator, device=device)
        else:
            if tuple(noise.shape) != tuple(shape):
                raise ConfigError(f"noise of shape {tuple(noise.shape)} does not match the requested {tuple(shape)}")
            x = noise.to(device=device, dtype=torch.float32)
        return self.run(model_fn, spaced, x, grain_map=grain_map, generator=generator, progress=progress)

    @abc.abstractmethod
    def run(self, model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True) -> torch.Tensor:
        """Denoise x_T into x_0 on the (respaced) diffusion."""


class DDPMSampler(Sampler):
    """Ancestral DDPM sampling on respaced steps (`sample_ddpm`)."""

    name = "ddpm"

    def run(self, model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True):
        return sample_ddpm(
            model_fn,
            diffusion,
            x,
            grain_map=grain_map,
            generator=generator,
            progress=progress,
            clip_denoised=self.config.clip_denoised,
        )


class DDIMSampler(Sampler):
    """DDIM sampling with stochasticity `eta` (`sample_ddim`)."""

    name = "ddim"

    def __init__(self, config):
        super().__init__(config)
        if not 0.0 <= config.eta <= 1.0:
            raise ConfigError(f"sampler ddim needs 0 <= eta <= 1, got {config.eta}")

    def run(self, model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True):
        return sample_ddim(
            model_fn,
            diffusion,
            x,
            grain_map=grain_map,
            generator=generator,
            progress=progress,
            eta=self.config.eta,
            clip_denoised=self.config.clip_denoised,
        )


SAMPLERS = {"ddpm": (DDPMSampler, DDPMConfig), "ddim": (DDIMSampler, DDIMConfig)}
