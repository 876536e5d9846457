"""Noise schedules: the forward-process variances beta_1..beta_T as float64 tensors."""

import math

import attrs
import torch

from d2it.errors import ConfigError


@attrs.frozen
class LinearConfig:
    """Options of the `linear` schedule (DDPM, Ho et al. 2020)."""

    num_timesteps: int = 1000
    beta_start: float = 1e-4  # at T = 1000; scaled by 1000 / T when `rescale`
    beta_end: float = 0.02
    rescale: bool = True  # ADM: the same total noise for every T


@attrs.frozen
class CosineConfig:
    """Options of the `cosine` schedule (Improved DDPM, Nichol & Dhariwal 2021)."""

    num_timesteps: int = 1000
    s: float = 0.008
    max_beta: float = 0.999


def _check_steps(num_timesteps: int) -> int:
    if num_timesteps < 1:
        raise ConfigError(f"schedule.num_timesteps must be at least 1, got {num_timesteps}")
    return num_timesteps


def linear_betas(
    num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, rescale: bool = True
) -> torch.Tensor:
    """Betas spaced evenly from `beta_start` to `beta_end`, both times 1000 / T when `rescale` (ADM, DiT).

    ADM's `get_named_beta_schedule("linear", T)` scales the DDPM endpoints by 1000 / T so that a
    process of any length adds about as much noise in all; at T = 1000 nothing changes.
    """
    _check_steps(num_timesteps)
    scale = 1000.0 / num_timesteps if rescale else 1.0
    start, end = scale * beta_start, scale * beta_end
    if not 0.0 < start <= end < 1.0:
        raise ConfigError(
            f"linear schedule needs 0 < beta_start <= beta_end < 1 after scaling by {scale:g} (1000 / T), "
            f"got {start:g}, {end:g}; use more timesteps or schedule.rescale=false"
        )
    return torch.linspace(start, end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Betas of alpha_bar(t) = cos^2((t + s) / (1 + s) * pi / 2), clipped at `max_beta` (Improved DDPM eq. 17)."""
    _check_steps(num_timesteps)
    if s < 0.0 or not 0.0 < max_beta < 1.0:
        raise ConfigError(f"cosine schedule needs s >= 0 and 0 < max_beta < 1, got s={s}, max_beta={max_beta}")

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def make_linear(config: LinearConfig) -> torch.Tensor:
    """Registry factory of `linear`."""
    return linear_betas(config.num_timesteps, config.beta_start, config.beta_end, config.rescale)


def make_cosine(config: CosineConfig) -> torch.Tensor:
    """Registry factory of `cosine`."""
    return cosine_betas(config.num_timesteps, config.s, config.max_beta)
