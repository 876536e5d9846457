"""The example plugin's components: the `frozen-tiny` backbone, `frozen-trapezoid` sampler and `frozen-sign`
regularizer (FROZEN as of d2it 0.1.0), plus the `frozen-strided` sampler. Registered by reference from the package's
`__init__`, so this module (and torch) is imported only when one of them is built."""

import math

import attrs
import torch
from torch import nn

from d2it_sampling.samplers import Sampler, progress_bar


@attrs.frozen
class ExampleConfig:
    """Options of `frozen-tiny`."""

    width: int = 16
    learn_sigma: bool = True


class ExampleTiny(nn.Module):
    """A small convolutional noise predictor conditioned on timestep and class."""

    def __init__(self, config, *, input_size, in_channels, num_classes, grains, attention):
        super().__init__()
        self.input_size, self.in_channels, self.num_classes, self.grains = input_size, in_channels, num_classes, grains
        self.learn_sigma = config.learn_sigma
        self.out_channels = in_channels * (2 if config.learn_sigma else 1)
        self.width = config.width
        self.inp = nn.Conv2d(in_channels, config.width, 3, padding=1)
        self.cond = nn.Embedding(num_classes + 1, config.width)
        self.t_proj = nn.Linear(config.width, config.width)
        self.out = nn.Conv2d(config.width, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def timestep_features(self, t):
        half = self.width // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, x, t, y, grain_map=None):
        c = self.cond(y) + self.t_proj(self.timestep_features(t))
        return self.out(torch.nn.functional.silu(self.inp(x) + c[:, :, None, None]))

    def example_inputs(self, batch):
        n = self.input_size
        return (
            torch.zeros(batch, self.in_channels, n, n),
            torch.zeros(batch, dtype=torch.long),
            torch.zeros(batch, dtype=torch.long),
        )


@attrs.frozen
class TrapezoidConfig:
    """Options of `frozen-trapezoid`: the sampler's steps and timestep spacing (any registered spacing)."""

    steps: int = 20
    spacing: str = "log-snr"


@torch.no_grad()
def sample_trapezoid(model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True):
    """The trapezoidal rule (an Euler predictor, then the mean slope) on the probability-flow ODE, ending with x̂_0.

    With y = x_t / sqrt(ᾱ_t) and σ_t = sqrt((1 - ᾱ_t) / ᾱ_t), dy/dσ = (y - D(y)) / σ, D the model's x̂_0;
    the model is asked only at kept steps, so it always sees timesteps it was trained on.
    """
    ac = diffusion.alphas_cumprod.tolist()
    sigmas = [math.sqrt((1 - a) / a) for a in ac]
    steps = torch.arange(diffusion.num_timesteps, device=x.device)

    def denoise(y, i):
        t = steps[i].expand(y.shape[0])
        return diffusion.p_mean_variance(model_fn, y / math.sqrt(1 + sigmas[i] ** 2), t)["pred_xstart"]

    y = x / math.sqrt(ac[-1])
    for i in progress_bar(reversed(range(diffusion.num_timesteps)), enabled=progress, total=len(ac)):
        denoised = denoise(y, i)
        if i == 0:
            return denoised
        s, s_next = sigmas[i], sigmas[i - 1]
        d = (y - denoised) / s
        y_pred = y + (s_next - s) * d
        d_next = (y_pred - denoise(y_pred, i - 1)) / s_next
        y = y + (s_next - s) * 0.5 * (d + d_next)
    return y


class TrapezoidSampler(Sampler):
    """Second-order ODE sampler (2 model calls per step) built on d2it_sampling's `Sampler` base."""

    name, order = "frozen-trapezoid", 2

    def run(self, model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True):
        return sample_trapezoid(model_fn, diffusion, x, grain_map=grain_map, generator=generator, progress=progress)


@attrs.frozen
class StridedConfig:
    """Options of `frozen-strided`: steps and its own spacing, "uniform" (even in t) or "logsnr" (even in log-SNR)."""

    steps: int = 20
    spacing: str = "logsnr"

    def __attrs_post_init__(self):
        if self.spacing not in ("uniform", "logsnr"):
            raise ValueError(f"spacing must be 'uniform' or 'logsnr', got {self.spacing!r}")


def strided_steps(alphas_cumprod, steps, spacing):
    """`steps` distinct steps from 0 to T-1, ascending: even in t ("uniform") or in λ = log(ᾱ / (1 - ᾱ)) ("logsnr")."""
    total = len(alphas_cumprod)
    if steps == 1:
        return [total - 1]
    if spacing == "uniform":
        return sorted({round(i * (total - 1) / (steps - 1)) for i in range(steps)})
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    lam = torch.log(ac / (1 - ac))
    targets = torch.linspace(float(lam[0]), float(lam[-1]), steps, dtype=torch.float64)
    return sorted(set((lam[None] - targets[:, None]).abs().argmin(dim=1).tolist()))


class StridedSampler(Sampler):
    """DDIM (eta 0) on steps of its own spacing; it picks its steps itself by overriding `timesteps`."""

    name, order = "frozen-strided", 1

    def __init__(self, config):
        super().__init__(config)
        self.spacing = config.spacing

    def timesteps(self, diffusion, steps=None):
        steps = self.config.steps if steps is None else int(steps)
        return strided_steps(diffusion.alphas_cumprod, steps, self.spacing)

    @torch.no_grad()
    def run(self, model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True):
        acp = diffusion.alphas_cumprod_prev.tolist()
        steps = torch.arange(diffusion.num_timesteps, device=x.device)
        for i in progress_bar(reversed(range(diffusion.num_timesteps)), enabled=progress, total=len(acp)):
            out = diffusion.p_mean_variance(model_fn, x, steps[i].expand(x.shape[0]))
            x = out["pred_xstart"] * acp[i] ** 0.5 + (1 - acp[i]) ** 0.5 * out["eps"]
        return x


@attrs.frozen
class SignConfig:
    """Options of `frozen-sign`: codes are ±scale per channel."""

    scale: float = 1.0
    loss_weight: float = 0.1


class SignQuantizer(nn.Module):
    """A 1-bit quantizer: each channel becomes ±scale, straight-through, with a commitment loss on used codes."""

    name = "frozen-sign"

    def __init__(self, config, *, channels):
        super().__init__()
        self.channels = self.in_channels = channels
        self.scale, self.loss_weight = float(config.scale), float(config.loss_weight)

    def posterior(self, h):
        q = torch.where(h >= 0, self.scale, -self.scale).to(h.dtype)
        return h + (q - h).detach()

    def forward(self, hs, masks):
        params = [self.posterior(h) for h in hs]
        total = sum(((h - p.detach()) ** 2).mean(1, keepdim=True).mul(m).sum() for h, p, m in zip(hs, params, masks))
        return params, total / sum(m.sum() for m in masks).clamp(min=1.0)

    def sample(self, params, generator=None, mode=False):
        return params
