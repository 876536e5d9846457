"""A pipeline object: a system and its sampling settings, called with classes, giving PIL images.

    from d2it import System
    from d2it_sampling import Pipeline

    pipe = Pipeline(System.from_pretrained("hf://OWNER/NAME"), sampler="dpmpp-2m")
    images = pipe([207, 360], steps=25, cfg_scale=1.5, seed=0)  # a list of PIL images

`Pipeline` is a thin caller of `d2it_sampling.pipeline.generate` with the settings `d2it sample`
uses: sample i of seed s is the same image `d2it sample --seed s` writes as its i-th PNG (the same
per-sample random streams, `sample_seed(s, i, ...)`, the same batches of 16 and the same 8-bit rounding,
`to_uint8`), whatever the batch size on the CPU. The diffusers export of a D²iT system
(`d2it export --format diffusers`) calls it too.
"""

import numpy as np
import torch

from d2it.errors import ConfigError
from d2it.registry import default_registry
from d2it_sampling.pipeline import Generation, generate

OUTPUT_TYPES = ("pil", "np", "pt", "uint8", "generation")
DEFAULT_CFG_SCALE = 1.5  # `d2it sample --cfg-scale`'s default
DEFAULT_BATCH = 16  # `d2it sample --batch`'s default


def to_uint8(images) -> np.ndarray:
    """Float images in [-1, 1] (NCHW or CHW) -> uint8 NHWC (HWC) with the rounding of DiT's `sample_ddp.py`.

    clamp(127.5 x + 128, 0, 255) truncated: what `d2it sample` writes to its PNGs and samples.npz.
    """
    x = torch.as_tensor(images).detach().to("cpu", torch.float32)
    if x.dim() not in (3, 4):
        raise ConfigError(f"expected an image tensor of 3 or 4 dimensions, got shape {tuple(x.shape)}")
    x = torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8)
    x = x.permute(1, 2, 0) if x.dim() == 3 else x.permute(0, 2, 3, 1)
    return np.ascontiguousarray(x.numpy())


def resolve_sampler(record, sampler: str | None = None, options: dict | None = None, registry=None):
    """(canonical sampler name, its options): the record's sampler and options, or another one with its defaults.

    `options` override single options of either; the result is checked (a bad name or option fails here).
    The same resolution as `d2it sample --sampler NAME --set sampler.OPTION=VALUE`.
    """
    registry = registry or default_registry()
    name = sampler or record.sampler
    if not name:
        raise ConfigError("this system records no sampler; name one (e.g. sampler='dpmpp-2m')")
    spec = registry.get("sampler", name)
    same = record.sampler is not None and spec.name == registry.get("sampler", record.sampler).name
    merged = dict(record.options.get("sampler", {})) if same else {}
    merged.update(options or {})
    registry.create("sampler", spec.name, dict(merged), where="sampler")
    return spec.name, merged


class Pipeline:
    """A built system with sampling settings; `pipe(classes, ...)` draws one image per class.

    system: a `d2it.system.System` (e.g. `d2it.System.from_pretrained(PATH or "hf://OWNER/NAME")`).
    sampler: a registered sampler (default the system's); sampler_options: its options (with the
        system's own sampler, they override the recorded ones; another sampler starts from its defaults).
    steps, cfg_scale, grain_cfg_scale, grain_options: the defaults of every call (steps None: the
        sampler's `steps` option; cfg_scale 1.5 as `d2it sample`).
    batch_size: images per forward batch (16, as `d2it sample`'s shards); it never changes what sample i
        is on the CPU. device: where to run (default where the system is; given, the system moves there).
    progress: tqdm bars (shown only on a terminal).
    """

    def __init__(
        self,
        system,
        sampler: str | None = None,
        *,
        sampler_options: dict | None = None,
        steps=None,
        cfg_scale: float = DEFAULT_CFG_SCALE,
        grain_cfg_scale: float = 1.0,
        grain_options: dict | None = None,
        batch_size: int = DEFAULT_BATCH,
        device=None,
        progress: bool = False,
        registry=None,
    ):
        self.system = system
        self.sampler, self.sampler_options = resolve_sampler(system.record, sampler, sampler_options, registry)
        self.steps = steps
        self.cfg_scale = float(cfg_scale)
        self.grain_cfg_scale = float(grain_cfg_scale)
        self.grain_options = dict(grain_options or {})
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.device = device
        self.progress = progress

    @classmethod
    def from_pretrained(cls, path, sampler: str | None = None, *, device="cpu", **settings) -> "Pipeline":
        """`Pipeline(System.from_pretrained(path, device=device), sampler, **settings)`: a folder or hf://OWNER/NAME."""
        from d2it.system import System

        return cls(System.from_pretrained(path, device=device), sampler, **settings)

    def __repr__(self) -> str:
        record = self.system.record
        return (
            f"Pipeline({record.backbone}, vae={record.vae}, grain={record.grain}, sampler={self.sampler!r}, "
            f"steps={self.steps}, cfg_scale={self.cfg_scale})"
        )

    def generate(
        self,
        classes,
        *,
        steps=None,
        cfg_scale: float | None = None,
        grain_cfg_scale: float | None = None,
        seed: int = 0,
        first_index: int = 0,
        batch_size: int | None = None,
    ) -> Generation:
        """The `Generation` (images in [-1, 1], grain maps, latents) of one image per class."""
        if isinstance(classes, int):
            classes = [classes]
        if int(seed) < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed}")
        return generate(
            self.system,
            classes,
            seed=int(seed),
            first_index=int(first_index),
            steps=self.steps if steps is None else steps,
            sampler=self.sampler,
            sampler_options=dict(self.sampler_options),
            cfg_scale=self.cfg_scale if cfg_scale is None else float(cfg_scale),
            grain_cfg_scale=self.grain_cfg_scale if grain_cfg_scale is None else float(grain_cfg_scale),
            grain_options=dict(self.grain_options) or None,
            batch_size=self.batch_size if batch_size is None else int(batch_size),
            device=self.device,
            progress=self.progress,
        )

    def __call__(
        self,
        classes,
        *,
        steps=None,
        cfg_scale: float | None = None,
        grain_cfg_scale: float | None = None,
        seed: int = 0,
        first_index: int = 0,
        batch_size: int | None = None,
        output_type: str = "pil",
    ):
        """One image per entry of `classes` (ints; one int is one image), sample i from the streams of (seed, i).

        steps / cfg_scale / grain_cfg_scale: this call's settings (default the pipeline's).
        first_index: the index of the first image (images i.. of a larger `d2it sample` run).
        output_type: `pil` (a list of PIL RGB images, the pixels `d2it sample` writes), `uint8`
            (a (B, H, W, 3) uint8 array, samples.npz's `arr_0`), `np` ((B, H, W, 3) float in [0, 1]),
            `pt` ((B, 3, H, W) float tensor in [0, 1], as diffusers' "pt"), or `generation` (the
            `Generation`: images in [-1, 1], grain maps and latents; also for systems without a VAE).
        """
        if output_type not in OUTPUT_TYPES:
            raise ConfigError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if output_type != "generation" and self.system.vae is None:
            raise ConfigError(
                "this system has no VAE, so its samples cannot be decoded into images; "
                "use output_type='generation' for the latents"
            )
        result = self.generate(
            classes, steps=steps, cfg_scale=cfg_scale, grain_cfg_scale=grain_cfg_scale, seed=seed,
            first_index=first_index, batch_size=batch_size,
        )  # fmt: skip
        if output_type == "generation":
            return result
        if output_type == "pt":
            return (result.images + 1.0) / 2.0
        if output_type == "np":
            return ((result.images + 1.0) / 2.0).permute(0, 2, 3, 1).numpy()
        arrays = to_uint8(result.images)
        if output_type == "uint8":
            return arrays
        from PIL import Image

        return [Image.fromarray(array) for array in arrays]
