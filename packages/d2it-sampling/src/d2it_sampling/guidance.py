"""Binding a content model's conditioning into a sampler's `model_fn(x, t)`, with classifier-free guidance."""

import torch

from d2it.errors import ConfigError

CHANNELS = ("all", "dit")
DIT_GUIDED_CHANNELS = 3  # DiT's forward_with_cfg guides eps[:, :3] "for exact reproducibility"


def guided_channels(channels: str, latent_channels: int) -> int:
    """How many leading ε channels guidance acts on: all of them, or DiT's first three."""
    if channels not in CHANNELS:
        raise ConfigError(f"guidance.channels must be one of {', '.join(CHANNELS)}, got {channels!r}")
    return latent_channels if channels == "all" else min(DIT_GUIDED_CHANNELS, latent_channels)


def conditioned_model(
    model, y, grain_map=None, *, cfg_scale: float = 1.0, null_class: int | None = None, channels: str = "all"
):
    """`model_fn(x, t)` calling the content model with classes `y` (and `grain_map`), guided when `cfg_scale` != 1.

    Classifier-free guidance (Ho & Salimans 2022) runs ONE forward pass on the batch doubled —
    conditional half with `y`, unconditional half with the null class (default the model's
    `null_class`, else `num_classes`), both with the same grain map — and returns
    ε = ε_uncond + cfg_scale (ε_cond - ε_uncond) on the guided channels: all C with
    `channels="all"`, the first three with `"dit"` (DiT's `forward_with_cfg`). Unguided ε channels
    and learned-variance channels (if any) are taken from the conditional half, as DiT does.
    """
    cfg_scale = float(cfg_scale)
    if cfg_scale == 1.0:
        if grain_map is None:
            return lambda x, t: model(x, t, y)
        return lambda x, t: model(x, t, y, grain_map)
    if null_class is None:
        null_class = getattr(model, "null_class", getattr(model, "num_classes", None))
        if null_class is None:
            raise ConfigError(
                "classifier-free guidance needs a null class, and this model has none (it was built with "
                "class_dropout=0, as DiT then is); sample it with cfg_scale 1"
            )
    guided_channels(channels, 1)  # validate before sampling starts
    y_null = torch.full_like(y, int(null_class))
    y_in = torch.cat([y, y_null])
    grain_in = None if grain_map is None else torch.cat([grain_map, grain_map])

    def model_fn(x, t):
        x_in, t_in = torch.cat([x, x]), torch.cat([t, t])
        out = model(x_in, t_in, y_in) if grain_in is None else model(x_in, t_in, y_in, grain_in)
        g = guided_channels(channels, x.shape[1])
        cond, uncond = out.chunk(2)
        eps = uncond[:, :g] + cfg_scale * (cond[:, :g] - uncond[:, :g])
        return torch.cat([eps, cond[:, g:]], dim=1)

    return model_fn
