"""Stage 2: the grain transformer and the content transformer, trained on a latent cache."""

import functools
import math
import sys
from contextlib import nullcontext

import torch
from torch import nn

from d2it import dist, layout
from d2it import system as systems
from d2it.errors import ConfigError, DataError
from d2it.io import state_sha256
from d2it.parts import save_part
from d2it_cli.data.latents import LatentCache
from d2it_cli.engine.draws import accepts, label_drop
from d2it_cli.engine.fastpaths import make_adamw
from d2it_cli.engine.task import Task
from d2it_cli.images import grain_map_image, grain_overlay, label_image, make_grid, save_png, to_uint8, vstack
from d2it_sampling import generate, make_diffusion

LR = 1e-4
BETAS = (0.9, 0.999)
GRAIN_SOURCES = ("gt", "random")


def open_cache(path, system, system_dir=None) -> LatentCache:
    """The cache at `path`, refused unless the system's DVAE weights produced it and its labels fit the system.

    The latent scale lives with the cache: when the system record disagrees (a run of `d2it encode`
    stopped between writing the manifest and updating d2it.json), the record is brought in line.
    """
    cache = LatentCache(path, random_flip=True)
    cache.check(state_sha256(system.vae.state_dict()))
    scale = cache.manifest.get("latent_scale")
    if scale is not None and not math.isclose(scale, system.record.latent_scale, rel_tol=1e-9):
        if system_dir is not None and dist.is_main():
            systems.update_record(system_dir, latent_scale=float(scale))
            print(
                f"note: {system_dir} had latent scale {system.record.latent_scale:.6g}, the cache {path} "
                f"{scale:.6g} (measured with these DVAE weights); the record now holds the cache's",
                file=sys.stderr,
            )
        system.with_record(latent_scale=float(scale))
    if cache.num_classes > system.record.num_classes:
        raise DataError(
            f"latent cache {path} has {cache.num_classes} classes but the system was built for "
            f"{system.record.num_classes} (d2it build --num-classes)"
        )
    if int(cache.manifest["grains"]) != system.grains:
        raise DataError(f"latent cache {path} has {cache.manifest['grains']} grains, the system's VAE {system.grains}")
    return cache


def load_system(system_dir, part: str, registry=None):
    """The system of a model directory with its VAE and `part` (grain or content) loaded, for stage 2."""
    record, _ = systems.read_record(system_dir)
    if not record.vae:
        raise ConfigError(f"the system in {system_dir} has no VAE, so there are no latents to train on")
    return systems.load(system_dir, registry, parts=["vae", part])


def _adamw(module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with a constant LR (1e-4 in the paper), betas (0.9, 0.999) (fused on CUDA)."""
    return make_adamw(module.parameters(), lr=lr, betas=BETAS, weight_decay=weight_decay)


class GrainLoss(nn.Module):
    """Forward = the grain predictor's training loss, so DDP sees the loss computation as a forward call."""

    def __init__(self, grain: nn.Module):
        super().__init__()
        self.grain = grain

    def forward(self, grain_maps, classes, **draws):
        return self.grain.loss(grain_maps, classes, **draws)


class GrainTask(Task):
    """The Dynamic Grain Transformer on the cache's grain maps (image or flip picked per item and step)."""

    name = "grain"
    find_unused_parameters = False  # every parameter takes part in every step

    def __init__(
        self, system_dir, cache, *, registry=None, lr: float = LR, weight_decay: float = 0.0, preview_classes=None
    ):
        self.system_dir, self.cache, self.registry = system_dir, cache, registry
        self.lr, self.weight_decay, self.preview_classes = lr, weight_decay, preview_classes
        self.system = self.dataset = None  # built by `build`

    def build(self, trainer):
        """The system with its grain predictor, and the latent cache checked against its DVAE."""
        system = load_system(self.system_dir, "grain", self.registry)
        if system.grain is None or not getattr(system.grain, "trainable", False):
            raise ConfigError(f"the system's grain predictor {system.record.grain!r} has nothing to train")
        self.system, self.dataset = system, open_cache(self.cache, system, self.system_dir)
        self.preview_classes = self.preview_classes or list(range(min(8, system.record.num_classes)))

    def modules(self):
        return {"grain": self.system.grain}

    def ddp_target(self, name, module):
        return GrainLoss(module)

    def make_optimizers(self, trainer):
        return {"grain": _adamw(self.system.grain, self.lr, self.weight_decay)}

    def keyed_draws(self, draws, grain_maps) -> dict:
        """The loss's masks and label dropout keyed by sample, as far as the predictor takes them."""
        grain, n = self.system.grain, grain_maps.shape[0]
        keyed = label_drop(draws, grain, grain.loss, n)
        if accepts(grain.loss, "mask_draws"):
            keyed["mask_draws"] = (draws.rand("mask-ratio", n), draws.rand("mask-order", n, grain_maps[0].numel()))
            if accepts(grain.loss, "token_count") and hasattr(grain, "masked_tokens"):
                # divide by this micro-batch's share of the global batch's masked tokens: a split step is the whole
                total = grain.masked_tokens(draws.rand_all("mask-ratio")).sum()
                keyed["token_count"] = total.float() * n / draws.global_batch
        return keyed

    def micro_step(self, trainer, batch, step, scale):
        keyed = self.keyed_draws(trainer.draws, batch["grain_map"])
        with trainer.autocast():
            loss = trainer.wrapped["grain"](batch["grain_map"], batch["label"], **keyed)
        (loss * scale).backward()
        return {"loss": loss.detach(), "fine_ratio": layout.fine_ratio(batch["grain_map"])}

    def write_preview(self, trainer, step, path):
        grain = self.system.grain
        weights = trainer.ema.get("grain")
        classes = torch.tensor(self.preview_classes, device=trainer.device)
        g = torch.Generator(device=trainer.device).manual_seed(0)
        if weights is not None:
            with weights.applied(grain):
                maps = grain.sample(classes, generator=g)
        else:
            maps = grain.sample(classes, generator=g)
        size = max(64, 8 * maps.shape[-1])
        save_png(
            label_image(
                make_grid(grain_map_image(maps, size, self.system.grains), nrow=len(classes)),
                f"grain maps, classes {self.preview_classes}",
            ),
            path,
        )

    def finish(self, trainer):
        if dist.is_main():
            save_part(
                self.system_dir, "grain", {k: v.detach().cpu() for k, v in trainer.final_weights("grain").items()}
            )


def _check_grain_source(grain_source: str, fine_ratio: float):
    if grain_source not in GRAIN_SOURCES:
        raise ConfigError(f"--grain-source must be one of {', '.join(GRAIN_SOURCES)}, got {grain_source!r}")
    if not 0.0 <= fine_ratio <= 1.0:
        raise ConfigError(f"--fine-ratio must lie in [0, 1], got {fine_ratio}")


class ContentTask(Task):
    """The Dynamic Content Transformer: multi-grained diffusion loss on latents sampled from the cached posterior."""

    name = "content"
    images_per_item = 1
    whole_step = True  # see prepare_step

    def __init__(
        self,
        system_dir,
        cache,
        *,
        registry=None,
        lr: float = LR,
        weight_decay: float = 0.0,
        grain_source: str = "gt",
        fine_ratio: float = 0.5,
        grain_loss: str = "grain",
        preview_classes=None,
        preview_steps: int = 50,
    ):
        _check_grain_source(grain_source, fine_ratio)
        self.system_dir, self.cache, self.registry = system_dir, cache, registry
        self.lr, self.weight_decay, self.grain_source, self.fine_ratio = lr, weight_decay, grain_source, fine_ratio
        self.grain_loss, self.preview_classes, self.preview_steps = grain_loss, preview_classes, preview_steps
        self.system = self.dataset = self.diffusion = None  # built by `build`
        self.scale = 1.0
        self.step_counts = None  # the step's cells per grain over the global batch (routed systems)

    def build(self, trainer):
        """The system with its content transformer, the latent cache checked against its DVAE, the diffusion."""
        system = load_system(self.system_dir, "content", self.registry)
        cache = open_cache(self.cache, system, self.system_dir)
        if self.grain_source == "random" and getattr(cache, "layout", "all") == "used":
            raise ConfigError(
                f"--grain-source random needs every grain of every region, but {cache.path} stores only the used "
                "ones; encode again with --grains all"
            )
        self.system, self.dataset = system, cache
        self.diffusion = make_diffusion(system, grain_loss=self.grain_loss)
        self.scale = float(system.record.latent_scale)
        self.preview_classes = self.preview_classes or list(range(min(8, system.record.num_classes)))
        # static graph, except a sparse refiner, which skips its weights on a batch without fine cells
        self.find_unused_parameters = bool(getattr(getattr(system.content, "refiner", None), "sparse", False))

    def modules(self):
        return {"content": self.system.content}

    def prepare(self, trainer):
        self.system.vae.to(trainer.device).eval().requires_grad_(False)

    def make_optimizers(self, trainer):
        return {"content": _adamw(self.system.content, self.lr, self.weight_decay)}

    def prepare_step(self, trainer, batches):
        """Count the cells of each grain over the step's global batch: the per-grain means divide by them."""
        self.step_counts = None
        if not self.system.routed:
            return  # a plain mean over equally sized micro-batches
        local = 0
        for micro, batch in enumerate(batches):
            trainer.focus(micro)
            local = local + layout.grain_cell_counts(self.grain_maps(batch, trainer.draws), self.system.grains)
        self.step_counts = dist.all_reduce_sum(local)  # each micro-batch divides by its samples' share of them

    def grain_maps(self, batch, draws=None) -> torch.Tensor:
        """Ground-truth grain maps, or the random ablation's maps (each region finest with probability `fine_ratio`)."""
        gt = batch["grain_map"]
        if self.grain_source == "gt":
            return gt
        if draws is None:
            u = torch.rand(gt.shape, device=gt.device)
        else:
            u = draws.rand("random-grains", gt.shape[0], *gt.shape[1:]).to(gt.device)
        fine = u < self.fine_ratio
        return torch.where(fine, torch.full_like(gt, self.system.grains - 1), torch.zeros_like(gt))

    def posterior(self, draws, batch, grain_map) -> torch.Tensor:
        """Latents drawn from the cached posteriors, each sample's draw keyed by sample (drawn once per step)."""
        vae, n = self.system.vae, grain_map.shape[0]
        if accepts(vae.sample_latent, "noise") and hasattr(vae, "noise_shapes"):
            noise = [draws.randn(f"posterior-{g}", n, *shape) for g, shape in enumerate(vae.noise_shapes())]
            return vae.sample_latent(batch["params"], grain_map, noise=noise)
        # another VAE draws with one generator over the global batch, of which this micro-batch takes its rows
        return draws.through("posterior", vae.sample_latent, batch["params"], grain_map)

    def noise(self, draws, x0, noise_map) -> torch.Tensor:
        """The diffusion's ε keyed by sample: i.i.d., or multi-grained in the grain layout of `noise_map`."""
        n, c = x0.shape[:2]
        if noise_map is None:
            return draws.randn("noise", n, *x0.shape[1:])
        h, w = noise_map.shape[1:]
        # as `layout.multigrain_noise`: one draw per code of each grain, copied to the cells it covers
        codes = [draws.randn(f"noise-{g}", n, c, h * 2**g, w * 2**g) for g in range(self.diffusion.grains)]
        return layout.neighbour_copy(codes, noise_map.to(x0.device))

    def micro_step(self, trainer, batch, step, scale):
        draws = trainer.draws
        grain_map = self.grain_maps(batch, draws)
        n = grain_map.shape[0]
        with torch.no_grad():
            x0 = self.posterior(draws, batch, grain_map).float() * self.scale
        t = draws.randint("timestep", self.diffusion.num_timesteps, n)
        noise_map = grain_map if self.system.routed else None
        noise = self.noise(draws, x0, noise_map)
        model = trainer.wrapped["content"]
        drop = label_drop(draws, self.system.content, self.system.content.forward, n)
        if drop:
            model = functools.partial(model, **drop)
        # a share of the global batch's counts as large as this micro-batch's share of its samples: the micro-batch
        # means, weighted by their samples, add up to the global batch's per-grain means
        counts = None if self.step_counts is None else self.step_counts * n / draws.global_batch
        with trainer.autocast():
            terms = self.diffusion.training_losses(
                model, x0, t, batch["label"], grain_map=noise_map, noise=noise, grain_counts=counts
            )
        loss = terms["loss"]
        (loss * scale).backward()
        logs = {k: v.detach() for k, v in terms.items() if torch.is_tensor(v) and v.dim() == 0}
        logs["fine_ratio"] = layout.fine_ratio(grain_map)
        return logs

    def write_preview(self, trainer, step, path):
        weights = trainer.ema.get("content")
        content = self.system.content
        ctx = weights.applied(content) if weights is not None else nullcontext()
        with ctx:
            gen = generate(
                self.system,
                self.preview_classes,
                seed=0,
                steps=self.preview_steps,
                device=trainer.device,
                progress=False,
            )
        rows = []
        if gen.images is not None:
            rows.append(
                label_image(
                    make_grid(to_uint8(gen.images), nrow=len(self.preview_classes)),
                    f"samples ({self.preview_steps} steps), classes {self.preview_classes}",
                )
            )
            if gen.grain_maps is not None:
                rows.append(
                    label_image(
                        make_grid(
                            grain_overlay(gen.images, gen.grain_maps, self.system.grains),
                            nrow=len(self.preview_classes),
                        ),
                        "grain maps (blue coarse, red fine)",
                    )
                )
        if rows:
            save_png(vstack(rows), path)

    def finish(self, trainer):
        if dist.is_main():
            save_part(
                self.system_dir, "content", {k: v.detach().cpu() for k, v in trainer.final_weights("content").items()}
            )
