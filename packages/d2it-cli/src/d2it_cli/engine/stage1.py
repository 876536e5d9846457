"""Stage 1: training the DVAE (L1 + LPIPS + PatchGAN + regularizer) on images."""

import math
import sys

import numpy as np
import torch

from d2it import dist
from d2it.layout import fine_ratio
from d2it.parts import load_vae, save_part
from d2it.system import update_extra
from d2it_cli.data import data_provenance, first_items, open_dataset
from d2it_cli.engine.draws import accepts
from d2it_cli.engine.task import Task
from d2it_cli.images import entropy_heatmap, grain_overlay, label_image, make_grid, save_png, to_uint8, vstack

BASE_LR = 4.5e-6  # per image of the global batch (LDM convention)
BETAS = (0.5, 0.9)


def preview_batch(dataset, count: int = 8) -> torch.Tensor:
    """The first `count` images of a dataset (its own transform) as one batch."""
    return torch.stack([x for x, _ in first_items(dataset, count)])


def dvae_panel(images, recon, grain_maps, entropy, grains: int, max_entropy: float | None = None) -> np.ndarray:
    """Rows: input, reconstruction, grain-map overlay (blue coarse, red fine), entropy map; uint8 HWC."""
    n, size = images.shape[0], images.shape[-1]
    rows = [
        ("input", to_uint8(images)),
        ("reconstruction", to_uint8(recon)),
        ("grain map (blue coarse, red fine)", grain_overlay(images, grain_maps, grains)),
    ]
    if entropy is not None:
        rows.append(("region entropy", entropy_heatmap(entropy, size=size, vmax=max_entropy)))
    return vstack([label_image(make_grid(arr, nrow=n), title) for title, arr in rows])


class DVAETask(Task):
    """The VAE (DDP-wrapped) and its PatchGAN discriminator (gradients averaged by hand), each with Adam (0.5, 0.9)."""

    name = "dvae"

    def __init__(self, system_dir, data: str, *, registry=None, options=None, lr=None, loss_options=None):
        self.system_dir, self.data, self.registry, self.options = system_dir, data, registry, options
        self.lr, self.loss_options = lr, loss_options or {}
        self.record = None  # the rest is built by `build`, once the trainer has seeded
        self.vae = self.dataset = self.preview = self.loss = self.discriminator = None

    def build(self, trainer):
        """The system's VAE, its loss (a new discriminator), the `--data` images and the first 8 as previews."""
        self.record, self.vae = load_vae(self.system_dir, self.registry)
        size, data, options, registry = self.record.image_size, self.data, self.options, self.registry
        self.dataset = open_dataset(data, size, train=True, options=options, registry=registry)
        self.preview = preview_batch(open_dataset(data, size, train=False, options=options, registry=registry))
        self.loss = self.vae.make_loss(**self.loss_options)
        self.discriminator = self.loss.discriminator
        if self.default_thresholds and dist.is_main():
            print(
                f"warning: {self.system_dir} has no measured entropy thresholds, so the DVAE trains on grain maps "
                f"from its built-in defaults {self.vae.thresholds}; measure them first with: d2it thresholds "
                f"--system {self.system_dir} --data {self.data} --out thresholds.json",
                file=sys.stderr,
            )

    @property
    def default_thresholds(self) -> bool:
        """True when the system has no measured entropy thresholds and a multi-grain VAE uses its defaults."""
        return not (self.record and self.record.thresholds) and self.vae.grains > 1

    def modules(self):
        # the loss's log-variance (LDM) trains with the VAE; it is checkpointed as its own part
        return {"vae": self.vae, "discriminator": self.discriminator, "loss_logvar": self.loss.logvar}

    def prepare(self, trainer):
        self.loss.to(trainer.device)
        self.loss.train()

    def learning_rate(self, trainer) -> float:
        """--lr, else 4.5e-6 x global batch."""
        return self.lr if self.lr is not None else BASE_LR * trainer.global_batch

    def make_optimizers(self, trainer):
        lr = self.learning_rate(trainer)
        fused = trainer.device.type == "cuda"
        return {
            "vae": torch.optim.Adam(
                [*self.vae.parameters(), *(p for p in self.loss.logvar.parameters() if p.requires_grad)],
                lr=lr,
                betas=BETAS,
                fused=fused,
            ),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=BETAS, fused=fused),
        }

    def keyed_noise(self, draws, n: int) -> dict:
        """The posterior draws keyed by sample, where the VAE takes them (else it draws its own)."""
        if not (accepts(self.vae.forward, "noise") and hasattr(self.vae, "noise_shapes")):
            return {}
        return {"noise": [draws.randn(f"posterior-{g}", n, *shape) for g, shape in enumerate(self.vae.noise_shapes())]}

    def micro_step(self, trainer, batch, step, scale):
        images = batch[0]
        vae = trainer.wrapped["vae"]
        keyed = self.keyed_noise(trainer.draws, images.shape[0])
        # the generator pass must not leave gradients on the discriminator
        self.discriminator.requires_grad_(False)
        try:
            with trainer.autocast():
                out = vae(images, **keyed)
                g_loss, g_logs = self.loss.generator_loss(images, out, step)
            (g_loss * scale).backward()
        finally:
            self.discriminator.requires_grad_(True)
        with trainer.autocast():
            d_loss, d_logs = self.loss.discriminator_loss(images, out, step)
        (d_loss * scale).backward()
        logs = {k: float(v) for k, v in {**g_logs, **d_logs}.items()}
        logs["fine_ratio"] = float(fine_ratio(out.grain_map))
        return logs

    def write_preview(self, trainer, step, path):
        if self.preview is None:
            return
        images = self.preview.to(trainer.device)
        out = self.vae(images, mode=True)
        bins = getattr(getattr(self.vae, "coder", None), "bins", None)
        panel = dvae_panel(
            images,
            out.recon.clamp(-1, 1),
            out.grain_map,
            out.entropy,
            self.vae.grains,
            math.log(bins) if bins else None,
        )
        save_png(panel, path)

    def finish(self, trainer):
        if dist.is_main():
            save_part(self.system_dir, "vae", {k: v.detach().cpu() for k, v in trainer.final_weights("vae").items()})
            # what the VAE learnt from (licence, attribution) travels with its weights; None where undescribed
            update_extra(self.system_dir, vae_loss=self.loss.convention(), vae_data=data_provenance(self.dataset))
