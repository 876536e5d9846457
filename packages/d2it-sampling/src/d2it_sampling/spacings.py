"""Timestep spacings: which steps of the full (usually 1000-step) process a sampler visits.

A spacing is a registered component (kind `spacing`); its factory returns a callable

    spacing(alphas_cumprod, steps) -> list[int]

alphas_cumprod: float64 (T,) ᾱ of the full process; steps: how many steps to keep (`uniform` also
takes DiT's "a,b,c" sections and "ddimN"). It returns the kept steps, ascending and distinct, each
in [0, T). A sampler picks its spacing with its `spacing` option, "name" or "name:key=value,...".
"""

import math

import attrs
import torch

from d2it.config import build_config
from d2it.errors import ConfigError
from d2it.registry import default_registry
from d2it_sampling.diffusion import space_timesteps


def _count(steps, name: str, total: int) -> int:
    """`steps` as a positive int no larger than the process (the non-uniform spacings take only counts)."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        try:
            steps = int(str(steps).strip())
        except ValueError:
            raise ConfigError(f"the {name} spacing takes a number of steps, got {steps!r}") from None
    if not 1 <= steps <= total:
        raise ConfigError(f"the {name} spacing needs 1 <= steps <= {total}, got {steps}")
    return steps


def _distinct(steps: list[int], total: int) -> list[int]:
    """Sorted steps made strictly increasing in [0, total) by nudging collisions up (then down from the top)."""
    out = sorted(int(min(max(s, 0), total - 1)) for s in steps)
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1] + 1)
    for i in range(len(out) - 1, -1, -1):
        out[i] = min(out[i], total - len(out) + i)
        if i + 1 < len(out):
            out[i] = min(out[i], out[i + 1] - 1)
    return out


def log_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """log σ_t = ½ log((1 - ᾱ_t) / ᾱ_t) of every step, float64 (increasing in t)."""
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return 0.5 * torch.log((1.0 - ac) / ac)


def _nearest_steps(log_sigma_targets: torch.Tensor, alphas_cumprod) -> list[int]:
    """The step whose log σ is nearest each target (k-diffusion's `sigma_to_t`, rounded to the grid)."""
    grid = log_sigmas(alphas_cumprod)
    return (log_sigma_targets[:, None] - grid[None]).abs().argmin(dim=1).tolist()


# -- the spacings ------------------------------------------------------------------------------
@attrs.frozen
class UniformConfig:
    """Options of the `uniform` spacing (none)."""


@attrs.frozen
class TrailingConfig:
    """Options of the `trailing` spacing (none)."""


@attrs.frozen
class LogSNRConfig:
    """Options of the `log-snr` spacing (none)."""


@attrs.frozen
class KarrasConfig:
    """Options of the `karras` spacing."""

    rho: float = 7.0

    def __attrs_post_init__(self):
        if not self.rho > 0:
            raise ConfigError(f"the karras spacing needs rho > 0, got {self.rho}")


def uniform_steps(alphas_cumprod, steps) -> list[int]:
    """Evenly spaced steps including 0 and T-1: ADM's / DiT's `space_timesteps` (also "a,b,c" and "ddimN")."""
    return space_timesteps(len(alphas_cumprod), steps)


def trailing_steps(alphas_cumprod, steps) -> list[int]:
    """round(T - i T/N) - 1 for i < N: always ends at T-1 ("trailing", Lin et al. 2024, Table 2)."""
    total = len(alphas_cumprod)
    n = _count(steps, "trailing", total)
    return _distinct([round(total - i * total / n) - 1 for i in range(n)], total)


def log_snr_steps(alphas_cumprod, steps) -> list[int]:
    """Steps uniform in λ = log(α/σ) between the first and the last step (DPM-Solver's "logSNR" spacing)."""
    total = len(alphas_cumprod)
    n = _count(steps, "log-snr", total)
    grid = log_sigmas(alphas_cumprod)
    targets = torch.linspace(float(grid[-1]), float(grid[0]), n, dtype=torch.float64)  # one step: T-1
    return _distinct(_nearest_steps(targets, alphas_cumprod), total)


def karras_steps(alphas_cumprod, steps, rho: float = 7.0) -> list[int]:
    """σ_i = (σ_max^(1/ρ) + i/(N-1) (σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ (Karras et al. 2022, eq. 5), on the grid."""
    total = len(alphas_cumprod)
    n = _count(steps, "karras", total)
    grid = log_sigmas(alphas_cumprod)
    lo, hi = math.exp(float(grid[0]) / rho), math.exp(float(grid[-1]) / rho)
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    targets = rho * torch.log(hi + ramp * (lo - hi))
    return _distinct(_nearest_steps(targets, alphas_cumprod), total)


def make_uniform(config: UniformConfig):
    """Registry factory of `uniform`."""
    return uniform_steps


def make_trailing(config: TrailingConfig):
    """Registry factory of `trailing`."""
    return trailing_steps


def make_log_snr(config: LogSNRConfig):
    """Registry factory of `log-snr`."""
    return log_snr_steps


def make_karras(config: KarrasConfig):
    """Registry factory of `karras`."""
    return lambda alphas_cumprod, steps: karras_steps(alphas_cumprod, steps, rho=config.rho)


def parse_spacing(text: str) -> tuple[str, dict]:
    """ "karras:rho=5" -> ("karras", {"rho": "5"}); a bare name has no options."""
    name, _, rest = str(text).strip().partition(":")
    options = {}
    for part in rest.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"cannot read spacing {text!r}: expected name or name:key=value,...")
        options[key.strip()] = value.strip()
    return name.strip(), options


def make_spacing(text: str, registry=None):
    """The spacing callable named by a sampler's `spacing` option (unknown names list the valid ones)."""
    name, options = parse_spacing(text)
    registry = registry or default_registry()
    spec = registry.get("spacing", name)
    return spec.factory(build_config(spec.config, options, where=f"spacing {name}"))
