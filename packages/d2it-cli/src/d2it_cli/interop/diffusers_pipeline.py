"""A d2it system as a diffusers pipeline, written by `d2it export --format diffusers` as `pipeline_d2it.py`.

    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(FOLDER_OR_REPO, trust_remote_code=True)  # pip install d2it-cli
    images = pipe(class_labels=[0, 1], num_inference_steps=25, guidance_scale=1.5,
                  generator=torch.Generator().manual_seed(0)).images  # PIL images

The pipeline runs d2it (`d2it_sampling.Pipeline`), so its images are those `d2it sample` draws, pixel for
pixel. d2it draws every sample from its own random streams, seeded by (seed, sample index), so that a
sample never depends on the batch; `generator` gives the seed:

- one generator: its seed (`generator.initial_seed()`, what `manual_seed` set; not its current state) is
  `d2it sample --seed`, and image i is d2it's sample i of that seed;
- a list of generators, one per image: image i is d2it's first sample of generator i's seed, so an image
  depends on its own generator only;
- none: a seed drawn from torch's global generator (`torch.manual_seed` makes it repeat);
- `seed=` (an int) instead of a generator: `d2it sample --seed`, exactly.

This file is a template in d2it-cli (`d2it_cli/interop/diffusers_pipeline.py`); the exported copy is what
diffusers imports.
"""

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from d2it_sampling import Pipeline

SEED_LIMIT = 2**63 - 1


def _seeds(generator, seed, count: int) -> list[tuple[int, int]]:
    """(seed, d2it sample index) of each image."""
    if seed is not None:
        return [(int(seed), i) for i in range(count)]
    if isinstance(generator, (list, tuple)):
        if len(generator) != count:
            raise ValueError(f"got {len(generator)} generators for {count} class labels; give one per image")
        return [(int(g.initial_seed()), 0) for g in generator]
    if generator is None:
        drawn = int(torch.randint(0, SEED_LIMIT, (1,)).item())
        return [(drawn, i) for i in range(count)]
    return [(int(generator.initial_seed()), i) for i in range(count)]


class D2itPipeline(DiffusionPipeline):
    """Class-conditional generation with a d2it system (a D²iT system: grain maps, then latents, then pixels).

    system: the `d2it.System` loaded from the `system/` folder; sampler: the default sampler (a d2it
    sampler name; None: the system's own), recorded in model_index.json.
    """

    model_cpu_offload_seq = "system"

    def __init__(self, system, sampler=None):
        super().__init__()
        self.register_modules(system=system)
        self.register_to_config(sampler=sampler)

    @torch.no_grad()
    def __call__(
        self,
        class_labels,
        num_inference_steps=None,
        guidance_scale: float = 1.5,
        generator=None,
        output_type: str = "pil",
        return_dict: bool = True,
        seed=None,
        sampler=None,
        grain_guidance_scale: float = 1.0,
        batch_size: int = 16,
    ):
        """One image per class label.

        class_labels: ints (one int is one image). num_inference_steps: sampling steps (None: the
        sampler's own default). guidance_scale: classifier-free guidance (1 = off; `d2it sample
        --cfg-scale`). generator / seed: see the module docstring. output_type: `pil` (PIL images),
        `np` ((B, H, W, 3) float in [0, 1]) or `pt` ((B, 3, H, W) float in [0, 1]). sampler: another
        d2it sampler for this call. grain_guidance_scale: the grain transformer's guidance
        (`--grain-cfg-scale`). batch_size: images per forward batch (never changes an image on the CPU).
        """
        labels = [int(c) for c in (class_labels if isinstance(class_labels, (list, tuple)) else [class_labels])]
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be pil, np or pt, got {output_type!r}")
        pipe = Pipeline(
            self.system,
            sampler=sampler or self.config.sampler,
            steps=num_inference_steps,
            cfg_scale=guidance_scale,
            grain_cfg_scale=grain_guidance_scale,
            batch_size=batch_size,
            progress=False,
        )
        kind = "pil" if output_type == "pil" else "pt"
        seeds = _seeds(generator, seed, len(labels))
        if len({s for s, _ in seeds}) == 1 and [i for _, i in seeds] == list(range(len(labels))):
            images = pipe(labels, seed=seeds[0][0], output_type=kind)  # one run: d2it sample's batches
        else:
            images = []
            for label, (s, index) in zip(labels, seeds):
                one = pipe([label], seed=s, first_index=index, output_type=kind)
                images.extend(one) if kind == "pil" else images.append(one)
            images = images if kind == "pil" else torch.cat(images)
        if output_type == "np":
            images = images.permute(0, 2, 3, 1).cpu().numpy()
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
