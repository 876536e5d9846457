"""Generation: grain maps, then latents by diffusion, then images, for a built `d2it.system.System`."""

import attrs
import torch

from d2it.errors import ConfigError, D2itError
from d2it.labels import check_classes
from d2it.progress import progress_bar
from d2it.registry import default_registry
from d2it.system import System, SystemRecord, eval_mode
from d2it_sampling.diffusion import GaussianDiffusion
from d2it_sampling.guidance import conditioned_model

_MASK64 = (1 << 64) - 1
GRAIN_STREAM, CONTENT_STREAM = 1, 2


@attrs.frozen
class Generation:
    """What `generate` returns, on the CPU.

    images: (B, 3, H, W) float in [-1, 1], or None when the system has no VAE.
    grain_maps: (B, h, w) int64 (0 = coarsest), or None for a plain DiT.
    latents: (B, C, H/8, W/8) float, divided by the latent scale (what the VAE decodes).
    """

    images: torch.Tensor | None
    grain_maps: torch.Tensor | None
    latents: torch.Tensor


def _mix64(x: int) -> int:
    """SplitMix64's finaliser: a well-spread 64-bit hash of `x`."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, index: int, stream: int) -> int:
    """The seed of sample `index`'s random stream `stream` (grain map or content) under the run seed `seed`."""
    h = _mix64(int(seed) & _MASK64)
    h = _mix64(h ^ int(stream))
    h = _mix64(h ^ int(index))
    return h >> 1  # a non-negative int64


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def make_diffusion(
    record_or_system, steps=None, *, grain_weights=None, grain_loss: str = "grain", registry=None
) -> GaussianDiffusion:
    """The diffusion a system trains and samples with.

    The betas come from the record's schedule (name and `options["schedule"]`); `learn_sigma`
    from the content model and the grains from the system's geometry (for a bare record: the
    backbone's `learn_sigma` option, default True, and 2 grains when a refiner is set). `steps` respaces it
    (None: all of the schedule's steps, as for training); `grain_weights` weights the per-grain
    loss terms (default 1 each) and `grain_loss` says how they are reduced (`grain`: the dynamic grain loss,
    per-grain means; `cell`: the plain mean over cells, the ablation without it).
    """
    if isinstance(record_or_system, System):
        record, content = record_or_system.record, record_or_system.content
        grains = record_or_system.geometry.content_grains
        learn_sigma = bool(getattr(content, "learn_sigma", True))
    elif isinstance(record_or_system, SystemRecord):
        # a bare record: the VAE is not built, so a routed record is taken to have D²iT's 2 grains
        record, grains = record_or_system, (2 if record_or_system.refine else None)
        learn_sigma = bool(record.options.get("backbone", {}).get("learn_sigma", True))
    else:
        raise D2itError(f"make_diffusion needs a System or SystemRecord, got {type(record_or_system).__name__}")
    registry = registry or default_registry()
    betas = registry.create("schedule", record.schedule, record.options.get("schedule"), where="schedule")
    if grains is None and grain_weights is not None:
        grains = len(grain_weights)
    diffusion = GaussianDiffusion(
        betas, learn_sigma=learn_sigma, grains=grains, grain_weights=grain_weights, grain_loss=grain_loss
    )
    return diffusion if steps is None else diffusion.respace(steps)


def _system_device(system) -> torch.device:
    for tensor in (*system.parameters(), *system.buffers()):
        return tensor.device
    return torch.device("cpu")


def _grain_maps(system, y, indices, *, seed, grain_cfg_scale, grain_options, device):
    """Grain maps for one batch: each sample from its own generator (so batching does not change them)."""
    grid = system.geometry.grid
    if system.grain is None:
        if not system.routed:
            return None
        return torch.full((y.shape[0], grid, grid), system.grains - 1, dtype=torch.long, device=device)  # all fine
    options = dict(grain_options or {})
    if float(grain_cfg_scale) != 1.0:
        if "cfg_scale" in options:
            raise ConfigError("give the grain predictor's guidance as grain_cfg_scale or in grain_options, not both")
        options["cfg_scale"] = float(grain_cfg_scale)
    maps = []
    for row, index in enumerate(indices):
        g = _generator(sample_seed(seed, index, GRAIN_STREAM), device)
        grain_map = system.grain.sample(y[row : row + 1], generator=g, **options)
        if tuple(grain_map.shape) != (1, grid, grid):
            raise D2itError(
                f"the grain predictor returned maps of shape {tuple(grain_map.shape)}; "
                f"the content model needs (1, {grid}, {grid})"
            )
        maps.append(grain_map.to(device=device, dtype=torch.long))
    return torch.cat(maps)


@torch.no_grad()
def generate(
    system,
    classes,
    *,
    seed: int = 0,
    steps=None,
    sampler: str | None = None,
    sampler_options: dict | None = None,
    cfg_scale: float = 1.0,
    guidance_channels: str | None = None,
    grain_cfg_scale: float = 1.0,
    grain_options: dict | None = None,
    batch_size: int | None = None,
    first_index: int = 0,
    device=None,
    progress: bool = True,
) -> Generation:
    """Generate one image per entry of `classes` with a built system: grain maps → latents → images.

    system: a `d2it.system.System` with a content model (and usually a VAE and grain predictor).
    classes: ints in [0, num_classes) (one per image; use 0 for unconditional models).
    seed: sample i's grain map and noise come from generators seeded by (seed, i), one per
        sample, so `batch_size` does not change what sample i is (the VAE decodes one image at a
        time; exactly equal where the content model's kernels round alike for every batch size, as on
        the CPU) and a result repeats for a seed on one device.
    first_index: the global index of the first sample (a shard of a larger run passes its
        offset, so sample i is the same whichever shard, rank or batch size produced it).
    steps: sampling steps (int, "a,b,c" or "ddimN"); None: the sampler's `steps` option.
    sampler / sampler_options: a registered sampler and its options (default the record's
        sampler with the record's options; with another sampler, its defaults).
    cfg_scale: classifier-free guidance on ε (1.0 = off), one batched forward per step.
    guidance_channels: `all` or `dit` (DiT's first three channels); default the record's
        `options["guidance"]["channels"]`, else `all`.
    grain_cfg_scale: guidance of the grain predictor, passed as its `cfg_scale` option when not
        1.0; grain_options: other options of its `sample` (e.g. `temperature`, `steps`).
    Grain maps: from `system.grain`; without one a routed content model gets all-fine maps and
    a plain DiT none. batch_size: images per forward batch (default all). device: where to run
    (default where the system's weights are; given, the system is moved there). progress: tqdm
    bars, shown only on a terminal.
    """
    content = system.content
    if content is None:
        raise D2itError("this system has no content model to generate with")
    record = system.record
    if device is not None:
        device = torch.device(device)
        system.to(device)
    else:
        device = _system_device(system)
    num_classes = int(getattr(content, "num_classes", record.num_classes))
    classes = check_classes(classes, num_classes).cpu()
    if classes.numel() == 0:
        raise ConfigError("no classes to generate")
    total = classes.shape[0]
    batch_size = total if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    sampler_name = sampler or record.sampler
    if sampler_options is None:
        sampler_options = record.options.get("sampler", {}) if sampler_name == record.sampler else {}
    sampler_obj = default_registry().create("sampler", sampler_name, dict(sampler_options), where="sampler")
    diffusion = make_diffusion(system)
    channels, size = int(content.in_channels), int(content.input_size)
    scale = float(system.latent_scale)
    if guidance_channels is None:
        guidance_channels = record.options.get("guidance", {}).get("channels", "all")

    images, grain_maps, latents = [], [], []
    with eval_mode(system), progress_bar(None, total=total, enabled=progress, desc="generate", unit="img") as bar:
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            indices = range(first_index + start, first_index + stop)
            y = classes[start:stop].to(device)
            grain_map = _grain_maps(
                system,
                y,
                indices,
                seed=seed,
                grain_cfg_scale=grain_cfg_scale,
                grain_options=grain_options,
                device=device,
            )
            generators = [_generator(sample_seed(seed, i, CONTENT_STREAM), device) for i in indices]
            model_fn = conditioned_model(content, y, grain_map, cfg_scale=cfg_scale, channels=guidance_channels)
            z = sampler_obj.sample(
                model_fn,
                diffusion,
                (len(indices), channels, size, size),
                grain_map=grain_map,
                steps=steps,
                generator=generators,
                progress=progress,
                device=device,
            )
            z = z / scale
            if system.vae is not None:
                # one image at a time: batched convolutions round differently per batch size, and sample
                # i's pixels must not depend on `batch_size` (decoding is one call per image, not per step)
                decoded = [system.vae.decode(z[i : i + 1]) for i in range(z.shape[0])]
                images.append(torch.cat(decoded).float().clamp(-1.0, 1.0).cpu())
            latents.append(z.cpu())
            if grain_map is not None:
                grain_maps.append(grain_map.cpu())
            bar.update(len(indices))
    return Generation(
        images=torch.cat(images) if images else None,
        grain_maps=torch.cat(grain_maps) if grain_maps else None,
        latents=torch.cat(latents),
    )
