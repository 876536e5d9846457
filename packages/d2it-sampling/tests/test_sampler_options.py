"""The sampler base reads only its reserved options: `steps`, and `spacing` only for an inherited `timesteps`."""

import attrs
import pytest
import torch

from d2it.errors import ConfigError, UnknownComponentError
from d2it_sampling import GaussianDiffusion
from d2it_sampling.samplers import Sampler
from d2it_sampling.spacings import log_snr_steps, uniform_steps


@attrs.frozen
class OwnSpacingConfig:
    steps: int = 10
    spacing: str = "logsnr"  # the plugin's own values: "uniform" or "logsnr"


class OwnSpacing(Sampler):
    """A plugin sampler that picks its steps itself from its own `spacing` option."""

    name = "own-spacing"

    def __init__(self, config):
        super().__init__(config)
        self.spacing = config.spacing  # the plugin's own attribute of the same name

    def timesteps(self, diffusion, steps=None):
        if self.spacing == "uniform":
            return super().timesteps(diffusion, steps)  # the base's spacing, resolved only now
        return log_snr_steps(diffusion.alphas_cumprod, self.config.steps if steps is None else steps)

    def run(self, model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True):
        return x


class Inherits(OwnSpacing):
    timesteps = Sampler.timesteps


@pytest.fixture
def diffusion():
    return GaussianDiffusion(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))


def test_a_sampler_that_overrides_timesteps_owns_its_spacing_option(diffusion):
    sampler = OwnSpacing(OwnSpacingConfig())
    assert sampler.spacing == "logsnr"
    assert sampler.timesteps(diffusion) == log_snr_steps(diffusion.alphas_cumprod, 10)
    uniform = OwnSpacing(OwnSpacingConfig(spacing="uniform"))
    assert uniform.timesteps(diffusion, 4) == uniform_steps(diffusion.alphas_cumprod, 4) == [0, 333, 666, 999]


def test_inheriting_timesteps_with_a_spacing_d2it_does_not_know_names_the_reserved_option():
    with pytest.raises(UnknownComponentError) as info:  # a D2itError: one sentence, exit code 2
        Inherits(OwnSpacingConfig())
    message = str(info.value)
    assert message.startswith("sampler own-spacing: unknown spacing 'logsnr'; valid spacings:")
    assert "`spacing` is a reserved sampler option since d2it 0.1.0 (plugin API 1.0)" in message
    assert "overrides `timesteps`" in message


def test_the_spacing_attribute_is_the_resolved_spacing_unless_a_subclass_sets_its_own(diffusion):
    class Plain(Sampler):
        name = "plain"

        def run(self, model_fn, diffusion, x, *, grain_map=None, generator=None, progress=True):
            return x

    sampler = Plain(OwnSpacingConfig(spacing="trailing"))
    assert sampler.spacing(diffusion.alphas_cumprod, 4) == sampler.timesteps(diffusion, 4) == [249, 499, 749, 999]
    assert OwnSpacing(OwnSpacingConfig()).spacing == "logsnr"


def test_steps_stays_reserved_for_every_sampler():
    with pytest.raises(ConfigError, match="sampler own-spacing needs steps >= 1"):
        OwnSpacing(OwnSpacingConfig(steps=0))
