"""Samplers: DDPM, DDIM, Euler, Heun and DPM-Solver++(2M) (ODE and SDE), as small functions plus registered objects.

Every sampling function has one signature (k-diffusion style):

    sample_x(model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True, **options) -> x_0

model_fn(x, t) -> model output: x (B, C, H, W) the current latent, t (B,) int64 steps of the
    *original* schedule (the diffusion maps respaced steps back); returns C channels of ε, or 2C
    (ε, then the learned-variance values) when `diffusion.learn_sigma`. Conditioning (classes,
    grain map, classifier-free guidance) is bound into it by the caller (`d2it_sampling.guidance`).
diffusion: a `GaussianDiffusion` cut to the steps to take (its num_timesteps; `Sampler.timesteps`).
x: the starting noise x_T. grain_map: (B, h, w) int64 or None; every noise draw uses its layout.
generator: one torch.Generator, a list of B (one per sample) or None (the global RNG).

The loops keep everything on the device: no `.item()` or host copies per step.

The σ-space samplers (Euler, Heun, DPM-Solver++) follow k-diffusion: with σ_t = sqrt((1 - ᾱ_t) / ᾱ_t)
the variance-exploding latent y = x_t / sqrt(ᾱ_t) = x_0 + σ_t ε obeys the probability-flow ODE
dy/dσ = (y - D(y, σ)) / σ, D the denoiser (the model's x̂_0). Every sampler ends with x̂_0 at the
smallest kept step (σ_next = 0), as DDPM and DDIM do.
"""

import abc
import math

import attrs
import torch

from d2it.errors import ConfigError, UnknownComponentError
from d2it.plugin_api import reserved_error
from d2it.progress import progress_bar
from d2it_sampling.spacings import make_spacing, parse_spacing


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


# -- σ-space samplers (k-diffusion style) -------------------------------------------------------
def _sigma_steps(diffusion, x):
    """(i, t, σ_t, σ_next) for every step, last first; σ are Python floats (no device sync), σ_next = 0 at the end."""
    ac = diffusion.alphas_cumprod.tolist()
    sigmas = [math.sqrt((1.0 - a) / a) for a in ac]
    return [(i, t, sigmas[i], sigmas[i - 1] if i > 0 else 0.0) for i, t in _timesteps(diffusion, x)]


def _denoiser(model_fn, diffusion, clip_denoised: bool):
    """D(y, t, σ): the model's x̂_0 from the variance-exploding latent y at step t (x_t = y / sqrt(1 + σ²))."""

    def denoise(y, t, sigma):
        out = diffusion.p_mean_variance(model_fn, y / math.sqrt(1.0 + sigma * sigma), t, clip_denoised=clip_denoised)
        return out["pred_xstart"]

    return denoise


def _to_ve(diffusion, x):
    """x_T (variance preserving, at the last kept step) -> y = x_T / sqrt(ᾱ_T)."""
    return x / math.sqrt(float(diffusion.alphas_cumprod[-1]))


@torch.no_grad()
def sample_euler(model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True, clip_denoised=False):
    """Euler steps of the probability-flow ODE (Karras et al. 2022, Alg. 1 without churn; k-diffusion `sample_euler`).

    y_next = y + (σ_next - σ) (y - D(y, σ)) / σ; on one grid of steps this is DDIM with η = 0.
    """
    denoise = _denoiser(model_fn, diffusion, clip_denoised)
    y = _to_ve(diffusion, x)
    for _, t, sigma, sigma_next in progress_bar(
        _sigma_steps(diffusion, x), enabled=progress, desc="euler", leave=False
    ):
        denoised = denoise(y, t, sigma)
        y = denoised if sigma_next == 0 else y + (sigma_next - sigma) * (y - denoised) / sigma
    return y


@torch.no_grad()
def sample_heun(model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True, clip_denoised=False):
    """Heun's second-order method on the PF ODE (Karras et al. 2022, Algorithm 1; k-diffusion `sample_heun`).

    An Euler predictor to σ_next, then the average of both slopes; the last step (to σ = 0) is
    Euler. N steps take 2N - 1 model calls.
    """
    denoise = _denoiser(model_fn, diffusion, clip_denoised)
    y = _to_ve(diffusion, x)
    steps = _sigma_steps(diffusion, x)
    t_prev = {i: t for i, t, _, _ in steps}
    for i, t, sigma, sigma_next in progress_bar(steps, enabled=progress, desc="heun", leave=False):
        d = (y - denoise(y, t, sigma)) / sigma
        if sigma_next == 0:
            y = y - sigma * d
            continue
        y_pred = y + (sigma_next - sigma) * d
        d_next = (y_pred - denoise(y_pred, t_prev[i - 1], sigma_next)) / sigma_next
        y = y + (sigma_next - sigma) * 0.5 * (d + d_next)
    return y


@torch.no_grad()
def sample_dpmpp_2m(model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True, clip_denoised=False):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2; k-diffusion `sample_dpmpp_2m`), first order at both ends.

    With λ = -log σ, h = λ_next - λ and r = h_last / h:
    y_next = (σ_next / σ) y - (e^{-h} - 1) D̃, D̃ = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1};
    the first step uses D̃ = D_i (DDIM) and the last one (σ_next = 0) returns D_i.
    """
    denoise = _denoiser(model_fn, diffusion, clip_denoised)
    y = _to_ve(diffusion, x)
    old, h_last = None, None
    for _, t, sigma, sigma_next in progress_bar(
        _sigma_steps(diffusion, x), enabled=progress, desc="dpm++2m", leave=False
    ):
        denoised = denoise(y, t, sigma)
        if sigma_next == 0:
            y = denoised
            break
        h = math.log(sigma / sigma_next)
        target = denoised
        if old is not None:
            r = h_last / h
            target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
        y = (sigma_next / sigma) * y - math.expm1(-h) * target
        old, h_last = denoised, h
    return y


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True, eta=1.0, s_noise=1.0,
    clip_denoised=False,
):  # fmt: skip
    """DPM-Solver++(2M) SDE (Lu et al. 2022; k-diffusion `sample_dpmpp_2m_sde`, midpoint), multi-grained noise.

    y_next = (σ_next/σ) e^{-ηh} y + (1 - e^{-(1+η)h}) D_i + ½ (1 - e^{-(1+η)h}) (D_i - D_{i-1}) / r
             + σ_next sqrt(1 - e^{-2ηh}) s_noise z,  z ~ N(0, I) in the grain layout;
    η = 0 is the ODE solver `sample_dpmpp_2m`; the last step (σ_next = 0) returns D_i.
    """
    if eta < 0 or s_noise < 0:
        raise ConfigError(f"dpmpp-2m-sde needs eta >= 0 and s_noise >= 0, got {eta}, {s_noise}")
    denoise = _denoiser(model_fn, diffusion, clip_denoised)
    y = _to_ve(diffusion, x)
    old, h_last = None, None
    steps = _sigma_steps(diffusion, x)
    for _, t, sigma, sigma_next in progress_bar(steps, enabled=progress, desc="dpm++2m-sde", leave=False):
        denoised = denoise(y, t, sigma)
        if sigma_next == 0:
            y = denoised
            break
        h = math.log(sigma / sigma_next)
        eta_h = eta * h
        decay = -math.expm1(-h - eta_h)
        y = (sigma_next / sigma) * math.exp(-eta_h) * y + decay * denoised
        if old is not None:
            y = y + 0.5 * decay * (h / h_last) * (denoised - old)
        if eta_h > 0 and s_noise > 0:
            z = diffusion.noise(y.shape, grain_map=grain_map, generator=generator, device=y.device, dtype=y.dtype)
            y = y + z * (sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise)
        old, h_last = denoised, h
    return y


# -- registered sampler objects ----------------------------------------------------------------
def _check_spacing(instance, attribute, value):
    parse_spacing(value)


@attrs.frozen
class DDPMConfig:
    """Options of the `ddpm` sampler."""

    steps: int = 250
    spacing: str = attrs.field(default="uniform", validator=_check_spacing)
    clip_denoised: bool = False


@attrs.frozen
class DDIMConfig:
    """Options of the `ddim` sampler."""

    steps: int = 50
    eta: float = 0.0
    spacing: str = attrs.field(default="uniform", validator=_check_spacing)
    clip_denoised: bool = False


@attrs.frozen
class EulerConfig:
    """Options of the `euler` sampler."""

    steps: int = 50
    spacing: str = attrs.field(default="karras", validator=_check_spacing)
    clip_denoised: bool = False


@attrs.frozen
class HeunConfig:
    """Options of the `heun` sampler (N steps = 2N - 1 model calls)."""

    steps: int = 25
    spacing: str = attrs.field(default="karras", validator=_check_spacing)
    clip_denoised: bool = False


@attrs.frozen
class DPMPP2MConfig:
    """Options of the `dpmpp-2m` sampler."""

    steps: int = 25
    spacing: str = attrs.field(default="log-snr", validator=_check_spacing)
    clip_denoised: bool = False


@attrs.frozen
class DPMPP2MSDEConfig:
    """Options of the `dpmpp-2m-sde` sampler."""

    steps: int = 50
    eta: float = 1.0
    s_noise: float = 1.0
    spacing: str = attrs.field(default="log-snr", validator=_check_spacing)
    clip_denoised: bool = False


class Sampler(abc.ABC):
    """A registered sampler: picks its steps, draws x_T in the grain layout and runs its sampling function.

    Subclasses set `name` and `order` and implement
    `run(model_fn, diffusion, x, *, grain_map, generator, progress)`; they may override
    `timesteps` (default: the config's `spacing`, "uniform" without one). `order` is the
    convergence order of the deterministic method as steps grow (checked exactly on Gaussian data
    by `d2it.testing.sampler.SamplerConformance`), or 0 for a stochastic sampler.

    The base reads only the reserved options (`d2it.RESERVED_OPTIONS["sampler"]`): `steps`, and
    `spacing` only for a subclass that inherits `timesteps`; one that overrides it owns `spacing`.
    """

    name = ""
    order = 1

    def __init__(self, config):
        if config.steps < 1:
            raise ConfigError(f"sampler {self.name} needs steps >= 1, got {config.steps}")
        self.config = config
        self._spacing_fn = None
        if type(self).timesteps is Sampler.timesteps:  # it relies on the spacing: refuse a bad one now
            self._resolve_spacing()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    def _resolve_spacing(self):
        """The registered spacing the config's `spacing` names (made once, when the inherited `timesteps` needs it)."""
        if self._spacing_fn is None:
            text = getattr(self.config, "spacing", "uniform")
            try:
                self._spacing_fn = make_spacing(text)
            except (UnknownComponentError, ConfigError) as exc:
                raise type(exc)(reserved_error("sampler", "spacing", f"sampler {self.name}: {exc}")) from None
        return self._spacing_fn

    @property
    def spacing(self):
        """The spacing callable the `spacing` option names (resolved on first use), unless a subclass set its own."""
        return self.__dict__["_own_spacing"] if "_own_spacing" in self.__dict__ else self._resolve_spacing()

    @spacing.setter
    def spacing(self, value):  # a subclass's own attribute of this name (plugins written for plugin API 1.0)
        self.__dict__["_own_spacing"] = value

    def timesteps(self, diffusion, steps=None) -> list[int]:
        """The steps of `diffusion` to visit, ascending: its `spacing` for `steps` (default the `steps` option)."""
        steps = self.config.steps if steps is None else steps
        return self._resolve_spacing()(diffusion.alphas_cumprod, steps)

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
        diffusion: the full (usually 1000-step) `GaussianDiffusion`; it is cut to
            `self.timesteps(diffusion, steps)` (steps: an int, or for `uniform` "a,b,c" sections or
            "ddimN"; default this sampler's `steps` option).
        grain_map: (B, h, w) int64 laying out every noise draw, or None for i.i.d. noise.
        generator: a torch.Generator on `device`, a list of B of them (per-sample streams), or None.
        noise: the starting x_T (default: drawn in the grain layout from `generator`).
        device: where to sample (default the grain map's device, else the CPU).
        Returns x_0 in float32 on `device`.
        """
        spaced = diffusion.subset(self.timesteps(diffusion, steps))
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


class _FunctionSampler(Sampler):
    """A sampler that calls `function(model_fn, diffusion, x, ..., **options)` with the config's `options` keys."""

    function = staticmethod(sample_ddpm)
    options: tuple = ("clip_denoised",)

    def run(self, model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True):
        kwargs = {key: getattr(self.config, key) for key in self.options}
        return type(self).function(
            model_fn, diffusion, x, grain_map=grain_map, generator=generator, progress=progress, **kwargs
        )


class DDPMSampler(_FunctionSampler):
    """Ancestral DDPM sampling on respaced steps (`sample_ddpm`)."""

    name, order = "ddpm", 0
    function = staticmethod(sample_ddpm)


class DDIMSampler(_FunctionSampler):
    """DDIM sampling with stochasticity `eta` (`sample_ddim`)."""

    name = "ddim"
    function = staticmethod(sample_ddim)
    options = ("eta", "clip_denoised")

    def __init__(self, config):
        super().__init__(config)
        if not 0.0 <= config.eta <= 1.0:
            raise ConfigError(f"sampler ddim needs 0 <= eta <= 1, got {config.eta}")
        self.order = 1 if config.eta == 0 else 0


class EulerSampler(_FunctionSampler):
    """Euler steps of the probability-flow ODE (`sample_euler`)."""

    name, order = "euler", 1
    function = staticmethod(sample_euler)


class HeunSampler(_FunctionSampler):
    """Heun's second-order method on the probability-flow ODE (`sample_heun`)."""

    name, order = "heun", 2
    function = staticmethod(sample_heun)


class DPMPP2MSampler(_FunctionSampler):
    """DPM-Solver++(2M), first order at both ends (`sample_dpmpp_2m`)."""

    name, order = "dpmpp-2m", 2
    function = staticmethod(sample_dpmpp_2m)


class DPMPP2MSDESampler(_FunctionSampler):
    """DPM-Solver++(2M) SDE with multi-grained noise (`sample_dpmpp_2m_sde`); eta = 0 is the ODE solver."""

    name = "dpmpp-2m-sde"
    function = staticmethod(sample_dpmpp_2m_sde)
    options = ("eta", "s_noise", "clip_denoised")

    def __init__(self, config):
        super().__init__(config)
        if config.eta < 0 or config.s_noise < 0:
            raise ConfigError(
                f"sampler dpmpp-2m-sde needs eta >= 0 and s_noise >= 0, got {config.eta}, {config.s_noise}"
            )
        self.order = 2 if config.eta == 0 else 0
