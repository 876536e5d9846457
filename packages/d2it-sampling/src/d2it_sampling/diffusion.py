"""Gaussian diffusion with multi-grained noise, after ADM's / DiT's `gaussian_diffusion.py`.

The process is DDPM's (Ho et al. 2020) with ε-prediction, Improved DDPM's learned-range variance
and hybrid loss (Nichol & Dhariwal 2021) and ADM's timestep respacing. D²iT's addition is the noise
layout: with a grain map every draw has one value per code, copied to the code's cells
(`d2it.layout.multigrain_noise`), and the losses are averaged per grain, then summed with weights.

Schedule buffers are float64 (on the CPU, copied to a device once); results come back in the
dtype of `x`. Timesteps `t` index this diffusion's own steps; `model_timesteps(t)` maps them to
the original schedule's steps, which is what models always see.
"""

import math
from collections.abc import Sequence

import torch

from d2it.errors import ConfigError
from d2it.layout import multigrain_noise, per_grain_mean, unit_cells

Generators = torch.Generator | Sequence[torch.Generator] | None


# -- timestep respacing ------------------------------------------------------------------------
def space_timesteps(num_timesteps: int, section_counts) -> list[int]:
    """The kept steps of a `num_timesteps` process, sorted (exactly DiT's / ADM's `space_timesteps`).

    `section_counts` is an int (that many steps, evenly spaced and including 0 and T-1), a list of
    ints (the process cut into equal sections, that many steps from each) or a string: "10,20,30"
    as the list, or "ddimN" for DDIM's fixed integer stride giving exactly N steps.
    """
    if isinstance(section_counts, bool):
        raise ConfigError(f"steps must be a number of steps, got {section_counts!r}")
    if isinstance(section_counts, str):
        text = section_counts.strip()
        if text.startswith("ddim"):
            desired = _parse_int(text[len("ddim") :], section_counts)
            for stride in range(1, num_timesteps + 1):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ConfigError(f"cannot take exactly {desired} steps with an integer stride from {num_timesteps}")
        section_counts = [_parse_int(p, section_counts) for p in text.split(",") if p.strip()]
    elif isinstance(section_counts, int):
        section_counts = [section_counts]
    section_counts = [int(c) for c in section_counts]
    if not section_counts or any(c < 1 for c in section_counts):
        raise ConfigError(f"steps must be positive, got {section_counts}")
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, kept = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ConfigError(f"cannot take {count} steps from a section of {size} (the process has {num_timesteps})")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        # accumulate the fractional stride (not j * stride): DiT's / ADM's float sums round differently
        # for many odd counts (999 steps keep 499, not 500), and checkpoints were sampled with theirs
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def _parse_int(text: str, whole) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"cannot read steps {whole!r}: expected an int, 'a,b,c' or 'ddimN'") from None


# -- Gaussian log-likelihood helpers (ADM losses.py) -------------------------------------------
def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x):
    """A fast approximation of the standard normal CDF (the one ADM uses)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    """Log-likelihood of data in [-1, 1] quantised to 256 bins under N(means, e^(2 log_scales)), elementwise.

    The edge bins extend to ±infinity (DDPM's decoder L_0, ADM's implementation).
    """
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )


# -- noise -------------------------------------------------------------------------------------
def gaussian_noise(
    shape, *, grain_map=None, grains: int = 2, generator: Generators = None, device=None, dtype=torch.float32
):
    """Standard normal noise of `shape` (B, C, H, W): i.i.d. per cell, or in the grain layout.

    With a grain map (B, h, w) every code gets one draw copied to its cells
    (`d2it.layout.multigrain_noise`), so H = h * 2**(grains-1). `generator` is one generator for
    the batch or a sequence of B generators, one per sample (sample i's noise then depends only on
    generator i, whatever the batch).
    """
    shape = tuple(int(s) for s in shape)
    if grain_map is not None:
        device = grain_map.device if device is None else torch.device(device)
        b, c, height, width = shape
        s = unit_cells(0, grains)
        if tuple(grain_map.shape) != (b, height // s, width // s) or height % s or width % s:
            raise ConfigError(
                f"grain map of shape {tuple(grain_map.shape)} does not fit latents {shape} with {grains} grains "
                f"(expected ({b}, {height // s}, {width // s}))"
            )
        grain_map = grain_map.to(device)
        if _is_sequence(generator):
            _check_generators(generator, b)
            return torch.cat(
                [
                    multigrain_noise(grain_map[i : i + 1], grains, c, generator=g, dtype=dtype)
                    for i, g in enumerate(generator)
                ]
            )
        return multigrain_noise(grain_map, grains, c, generator=generator, dtype=dtype)
    if _is_sequence(generator):
        _check_generators(generator, shape[0])
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def _is_sequence(generator) -> bool:
    return isinstance(generator, (list, tuple))


def _check_generators(generators, batch: int):
    if len(generators) != batch:
        raise ConfigError(f"got {len(generators)} generators for a batch of {batch}; give one per sample or one in all")


# -- the process -------------------------------------------------------------------------------
GRAIN_LOSSES = ("grain", "cell")

_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "log_betas",
    "fixed_large_log_variance",
    "timestep_map",
)


class GaussianDiffusion:
    """A discrete Gaussian diffusion over `len(betas)` steps with ε-prediction and multi-grained noise.

    betas: float64 (T,) forward variances (a registered `schedule`'s output).
    learn_sigma: the model outputs 2C channels, ε then v in [-1, 1] interpolating log β_t and
        log β̃_t (Improved DDPM's learned range); else C channels and the fixed variance
        (β_t, "fixed large", as DiT; `sigma_small=True`: the posterior variance β̃_t).
    grains: k, the number of grains of the grain maps it is given (default len(grain_weights), else 2).
    grain_weights: weights of the per-grain loss terms, coarsest first (default all 1).
    grain_loss: `grain` (the dynamic grain loss: the mean over the cells of each grain, summed with the
        weights, so a coarse code counts once and the balance does not move with the fine ratio) or
        `cell` (the plain mean over every latent cell, a coarse code counted once per copied cell: the
        ablation without the dynamic grain loss).
    timestep_map: original step of each of these steps (set by `respace`; default the identity).
    """

    def __init__(
        self,
        betas,
        *,
        learn_sigma: bool = True,
        sigma_small: bool = False,
        grains: int | None = None,
        grain_weights: Sequence[float] | None = None,
        grain_loss: str = "grain",
        timestep_map=None,
    ):
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().flatten()
        if betas.numel() < 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ConfigError("betas must be a non-empty sequence of numbers in (0, 1]")
        if grain_weights is not None:
            grain_weights = tuple(float(w) for w in grain_weights)
            if grains is not None and len(grain_weights) != grains:
                raise ConfigError(f"grain_weights has {len(grain_weights)} entries for {grains} grains")
        self.grains = int(grains or (len(grain_weights) if grain_weights else 2))
        if self.grains < 1:
            raise ConfigError(f"grains must be at least 1, got {grains}")
        self.grain_weights = grain_weights or (1.0,) * self.grains
        if grain_loss not in GRAIN_LOSSES:
            raise ConfigError(f"unknown grain loss {grain_loss!r}; valid: {', '.join(GRAIN_LOSSES)}")
        self.grain_loss = grain_loss
        self.learn_sigma = bool(learn_sigma)
        self.sigma_small = bool(sigma_small)
        self.num_timesteps = n = betas.numel()

        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = ac = torch.cumprod(alphas, 0)
        self.alphas_cumprod_prev = acp = torch.cat([ac.new_ones(1), ac[:-1]])
        self.sqrt_alphas_cumprod = ac.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ac).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log(1.0 - ac)
        self.sqrt_recip_alphas_cumprod = (1.0 / ac).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / ac - 1.0).sqrt()
        # q(x_{t-1} | x_t, x_0): variance β̃_t and mean coefficients (DDPM eq. 7)
        self.posterior_variance = pv = betas * (1.0 - acp) / (1.0 - ac)
        # β̃_0 = 0, so the log is clipped to β̃_1 at t = 0 (a single-step process uses β_0)
        first = pv[1:2] if n > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, pv[1:]]))
        self.posterior_mean_coef1 = betas * acp.sqrt() / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - acp) * alphas.sqrt() / (1.0 - ac)
        self.log_betas = torch.log(betas)
        self.fixed_large_log_variance = torch.log(torch.cat([first, betas[1:]]))
        if timestep_map is None:
            timestep_map = torch.arange(n)
        self.timestep_map = torch.as_tensor(timestep_map, dtype=torch.long).cpu()
        if self.timestep_map.shape != (n,):
            raise ConfigError(f"timestep_map needs {n} entries, got {tuple(self.timestep_map.shape)}")
        self._device_cache: dict = {}

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(steps={self.num_timesteps}, learn_sigma={self.learn_sigma}, "
            f"grains={self.grains}, grain_weights={self.grain_weights}, grain_loss={self.grain_loss!r})"
        )

    # -- buffers ----------------------------------------------------------------------------
    def _buffer(self, name: str, device) -> torch.Tensor:
        key = (name, str(device))
        if key not in self._device_cache:
            buf = getattr(self, name)
            if torch.device(device).type == "mps" and buf.dtype == torch.float64:
                buf = buf.float()  # MPS has no float64
            self._device_cache[key] = buf.to(device)
        return self._device_cache[key]

    def _extract(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """buffer[t] broadcastable against `like` (B, ...), in like's dtype."""
        values = self._buffer(name, t.device)[t].to(like.dtype)
        return values.reshape(t.shape[0], *([1] * (like.ndim - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The original-schedule step of each of these steps (what the model is conditioned on)."""
        return self._buffer("timestep_map", t.device)[t]

    def respace(self, steps) -> "GaussianDiffusion":
        """The process on `steps` (see `space_timesteps`), betas from the kept ᾱ (ADM's SpacedDiffusion)."""
        if isinstance(steps, int) and not isinstance(steps, bool) and steps == self.num_timesteps:
            return self
        return self.subset(space_timesteps(self.num_timesteps, steps))

    def subset(self, kept) -> "GaussianDiffusion":
        """The process on exactly the steps `kept` of this one (sorted, distinct), betas from their ᾱ."""
        kept = [int(k) for k in kept]
        if not kept or kept != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= self.num_timesteps:
            raise ConfigError(f"kept steps must be distinct, ascending and in [0, {self.num_timesteps}), got {kept}")
        ac = self.alphas_cumprod[kept]
        prev = torch.cat([ac.new_ones(1), ac[:-1]])
        return GaussianDiffusion(
            1.0 - ac / prev,
            learn_sigma=self.learn_sigma,
            sigma_small=self.sigma_small,
            grains=self.grains,
            grain_weights=self.grain_weights,
            grain_loss=self.grain_loss,
            timestep_map=self.timestep_map[kept],
        )

    # -- noise and the forward process ------------------------------------------------------
    def noise(self, shape, *, grain_map=None, generator: Generators = None, device=None, dtype=torch.float32):
        """Standard normal noise of `shape`, in the grain layout when a grain map is given (see `gaussian_noise`)."""
        return gaussian_noise(
            shape, grain_map=grain_map, grains=self.grains, generator=generator, device=device, dtype=dtype
        )

    def q_mean_variance(self, x0, t):
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = self._extract("sqrt_alphas_cumprod", t, x0) * x0
        variance = self._extract("alphas_cumprod", t, x0).neg() + 1.0
        log_variance = self._extract("log_one_minus_alphas_cumprod", t, x0)
        return mean, variance.expand_as(x0), log_variance.expand_as(x0)

    def q_sample(self, x0, t, noise=None, *, grain_map=None, generator: Generators = None):
        """Draw x_t ~ q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I), the noise in the grain layout if given."""
        if noise is None:
            noise = self.noise(x0.shape, grain_map=grain_map, generator=generator, device=x0.device, dtype=x0.dtype)
        return (
            self._extract("sqrt_alphas_cumprod", t, x0) * x0
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior_mean_variance(self, x0, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM eq. 6-7)."""
        mean = self._extract("posterior_mean_coef1", t, x_t) * x0 + self._extract("posterior_mean_coef2", t, x_t) * x_t
        variance = self._extract("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self._extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    def predict_xstart_from_eps(self, x_t, t, eps):
        """x_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)."""
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_xstart(self, x_t, t, pred_xstart):
        """The ε that maps x_0 to x_t at step t."""
        return (self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart) / self._extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    # -- the reverse process ----------------------------------------------------------------
    def split_output(self, output: torch.Tensor, channels: int):
        """(ε, variance values or None) from a model output of C or 2C channels; a wrong width is an error."""
        expected = channels * (2 if self.learn_sigma else 1)
        if output.ndim < 2 or output.shape[1] != expected:
            raise ConfigError(
                f"the model returned {output.shape[1] if output.ndim > 1 else '?'} channels for {channels}-channel "
                f"latents; this diffusion (learn_sigma={self.learn_sigma}) expects {expected}"
            )
        if self.learn_sigma:
            return output[:, :channels], output[:, channels:]
        return output, None

    def p_mean_variance_from_output(self, output, x, t, *, clip_denoised: bool = False, denoised_fn=None):
        """p(x_{t-1} | x_t) from a model output: dict(mean, variance, log_variance, pred_xstart, eps)."""
        output = output.to(x.dtype)
        eps, values = self.split_output(output, x.shape[1])
        if values is not None:
            # learned range: v in [-1, 1] interpolates log β̃_t (v = -1) and log β_t (v = 1)
            min_log = self._extract("posterior_log_variance_clipped", t, x)
            max_log = self._extract("log_betas", t, x)
            frac = (values + 1.0) / 2.0
            log_variance = frac * max_log + (1.0 - frac) * min_log
        else:
            name = "posterior_log_variance_clipped" if self.sigma_small else "fixed_large_log_variance"
            log_variance = self._extract(name, t, x).expand_as(x)
        pred_xstart = self.predict_xstart_from_eps(x, t, eps)
        if denoised_fn is not None:
            pred_xstart = denoised_fn(pred_xstart)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {
            "mean": mean,
            "variance": torch.exp(log_variance),
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "eps": eps,
        }

    def p_mean_variance(self, model_fn, x, t, *, clip_denoised: bool = False, denoised_fn=None):
        """Call `model_fn(x, model_timesteps(t))` and return p(x_{t-1} | x_t) as `p_mean_variance_from_output`."""
        output = model_fn(x, self.model_timesteps(t))
        return self.p_mean_variance_from_output(output, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn)

    # -- losses -----------------------------------------------------------------------------
    def vb_terms(self, x0, x_t, t, output, *, clip_denoised: bool = False) -> torch.Tensor:
        """The variational bound terms in bits, elementwise (B, C, H, W).

        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) where t > 0 and the decoder's negative
        log-likelihood -log p(x_0 | x_1) (discretised Gaussian) where t = 0 (DDPM eq. 5, ADM).
        """
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance_from_output(output, x_t, t, clip_denoised=clip_denoised)
        kl = normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"]) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, means=out["mean"], log_scales=0.5 * out["log_variance"])
        nll = nll / math.log(2.0)
        first = (t == 0).reshape(t.shape[0], *([1] * (x0.ndim - 1)))
        return torch.where(first, nll, kl)

    def grain_mean(self, values: torch.Tensor, grain_map=None, counts=None):
        """(weighted sum of per-grain means, per-grain means (k,) or None) of an elementwise loss.

        Without a grain map: (mean over everything, None). With one: the mean over the cells of
        each grain (`d2it.layout.per_grain_mean`: over the whole batch, or divided by `counts`),
        summed with `grain_weights`; with `grain_loss="cell"` the plain mean over every cell instead
        (the per-grain means are still returned, for the logs).
        """
        if grain_map is None:
            return values.mean(), None
        per_grain = per_grain_mean(values, grain_map.to(values.device), self.grains, counts)
        if self.grain_loss == "cell":
            return values.mean(), per_grain
        weights = torch.tensor(self.grain_weights, dtype=per_grain.dtype, device=per_grain.device)
        return (weights * per_grain).sum(), per_grain

    def training_losses(
        self, model, x0, t, y, grain_map=None, generator: Generators = None, noise=None, grain_counts=None
    ) -> dict:
        """The hybrid loss for one batch; every entry is a scalar (a mean over the batch).

        model: a content model, called `model(x_t, model_timesteps(t), y)` (plus `grain_map` when
            given); x0: (B, C, H, W) clean latents in the copied layout; t: (B,) int64 steps;
            y: (B,) int64 classes; grain_map: (B, h, w) int64 or None for i.i.d. noise (plain DiT);
            noise: the ε to use (drawn in the grain layout when omitted); grain_counts (k,): the cells
            of each grain to divide by instead of this batch's (a micro-batch's share of the global
            batch's counts, so that the loss of a split batch is that of the whole).
        Returns dict with `loss` = `mse` + `vb`; `mse`, the ε error averaged per grain and summed
        with the grain weights (plain mean without a grain map); `vb`, the VLB terms in bits on a
        detached ε, reduced the same way and scaled by num_timesteps / 1000 as in ADM (0 without
        learned variance); with a grain map also `mse_grain_<g>` and `vb_grain_<g>` for each grain g.
        """
        if noise is None:
            noise = self.noise(x0.shape, grain_map=grain_map, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        mt = self.model_timesteps(t)
        output = model(x_t, mt, y) if grain_map is None else model(x_t, mt, y, grain_map)
        output = output.float()
        x0, x_t, noise = x0.float(), x_t.float(), noise.float()
        eps, values = self.split_output(output, x0.shape[1])
        mse, mse_grains = self.grain_mean((noise - eps) ** 2, grain_map, grain_counts)
        terms = {"mse": mse}
        if values is not None:
            # the VLB trains only the variance: the mean is taken from a detached ε (Improved DDPM §3.1)
            frozen = torch.cat([eps.detach(), values], dim=1)
            vb, vb_grains = self.grain_mean(self.vb_terms(x0, x_t, t, frozen), grain_map, grain_counts)
            scale = self.num_timesteps / 1000.0
            vb = vb * scale
            vb_grains = None if vb_grains is None else vb_grains * scale
        else:
            vb, vb_grains = mse.new_zeros(()), None
        terms["vb"] = vb
        terms["loss"] = mse + vb
        if mse_grains is not None:
            for g in range(self.grains):
                terms[f"mse_grain_{g}"] = mse_grains[g]
                terms[f"vb_grain_{g}"] = vb_grains[g] if vb_grains is not None else mse.new_zeros(())
        return terms
