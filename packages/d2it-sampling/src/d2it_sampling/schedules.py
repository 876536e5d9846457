"""Noise schedules: the forward-process variances beta_1..beta_T as float64 tensors."""

import math

import attrs
import torch

from d2it.errors import ConfigError
from d2it.spec import ComponentSpec


@attrs.frozen
class LinearConfig:
    """Options of the `linear` schedule (DDPM, Ho et al. 2020)."""

    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02


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


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Betas spaced evenly from `beta_start` to `beta_end` (DDPM's schedule; no rescaling with T)."""
    _check_steps(num_timesteps)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ConfigError(f"linear schedule needs 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


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
    return linear_betas(config.num_timesteps, config.beta_start, config.beta_end)


def make_cosine(config: CosineConfig) -> torch.Tensor:
    """Registry factory of `cosine`."""
    return cosine_betas(config.num_timesteps, config.s, config.max_beta)


SCHEDULES = [
    ComponentSpec("linear", "schedule", make_linear, LinearConfig, summary="DDPM linear betas 1e-4 .. 0.02 (DiT)"),
    ComponentSpec("cosine", "schedule", make_cosine, CosineConfig, summary="Improved-DDPM cosine alpha-bar schedule"),
]
