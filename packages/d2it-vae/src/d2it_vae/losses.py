"""Stage-1 losses: L1 + LPIPS(VGG) + hinge PatchGAN with the adaptive weight + regularizer loss.

Normalised as each regularizer's reference loss, with DQ-VAE's cap of 0.75 on the adaptive GAN weight:

- `ldm` (KL, the default there): LDM's `LPIPSWithDiscriminator` (contperceptual.py). The
  reconstruction (|x - x̂| + w·LPIPS per pixel) is divided by exp(logvar) for a learnable scalar
  log-variance, logvar added, summed per sample and averaged over the batch; the KL is summed per
  sample too, so the `kl` regularizer's `loss_weight` 1e-6 is LDM's "slight KL penalty" at any image size.
- `taming` (VQ, the default there): taming's `VQLPIPSWithDiscriminator`: means over pixels, no
  log-variance; the codebook loss is a mean as well.
The LPIPS trunk (torchvision VGG16) is loaded from `lpips_weights` when given, from torch.hub's cache
(downloaded on first use) otherwise, or left random with `pnet_rand=True` (tests); always as plain
tensors with `weights_only=True`.
"""

import copy
import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from d2it import weights
from d2it.errors import CheckpointError, ConfigError

#################################################################################
#                                  LPIPS (VGG)                                  #
#################################################################################


VGG16_URL = weights.VGG16_URL  # torchvision's VGG16_Weights.IMAGENET1K_V1


def _vgg_state_dict(path) -> dict:
    """torchvision VGG16 weights (`features.*` keys) from a local file or torch.hub's cache, as plain tensors."""
    if path is None:
        path = weights.hub_file(VGG16_URL, "VGG16 weights for LPIPS", "--lpips-weights")
    state = weights.load_plain(path, "VGG16 weights file")
    if not any(k.startswith("features.") for k in state):
        raise CheckpointError(f"{path} is not a torchvision VGG16 state dict (no 'features.*' tensors)")
    return state


@functools.lru_cache(maxsize=2)
def _lpips_template(lpips_weights, pnet_rand: bool) -> nn.Module:
    """One frozen LPIPS network per weights source; nothing is unpickled (see `d2it.weights`)."""
    trunk = None if pnet_rand else _vgg_state_dict(lpips_weights)
    model = weights.lpips_network("vgg", trunk=trunk)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def make_lpips(lpips_weights=None, pnet_rand: bool = False) -> nn.Module:
    """LPIPS with the VGG trunk (frozen, eval mode); the linear layers ship with the `lpips` package."""
    key = None if lpips_weights is None else str(Path(lpips_weights).resolve())
    return copy.deepcopy(_lpips_template(key, bool(pnet_rand)))


#################################################################################
#                                 Discriminator                                 #
#################################################################################


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix / taming-transformers) with BatchNorm and LeakyReLU(0.2)."""

    def __init__(self, in_channels: int = 3, width: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(width * prev, width * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(width * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


#################################################################################
#                                     Loss                                      #
#################################################################################


NORMALIZATIONS = ("ldm", "taming")


class LogVariance(nn.Module):
    """LDM's scalar log-variance of the reconstruction likelihood (`logvar`), learnable or fixed."""

    def __init__(self, init: float = 0.0, learn: bool = True):
        super().__init__()
        self.logvar = nn.Parameter(torch.full((), float(init)), requires_grad=learn)

    def forward(self) -> torch.Tensor:
        return self.logvar


class VAELoss(nn.Module):
    """Reconstruction NLL + adaptive-weighted hinge GAN + weighted regularizer loss (see the module docstring)."""

    def __init__(
        self,
        vae: nn.Module,
        *,
        disc_start: int = 0,
        reg_weight: float | None = None,
        perceptual_weight: float = 1.0,
        disc_weight: float = 1.0,
        adaptive_cap: float = 0.75,
        disc_layers: int = 3,
        disc_width: int = 64,
        lpips_weights: str | None = None,
        pnet_rand: bool = False,
        normalization: str | None = None,
        learn_logvar: bool = False,
        logvar_init: float = 0.0,
    ):
        super().__init__()
        self._last_layer = vae.last_layer  # a bound method: the VAE's parameters stay out of this module
        kl = getattr(vae.regularizer, "name", "") == "kl"
        # the regularizer carries its weight (its `loss_weight` option); `reg_weight` overrides it
        self.reg_weight = float(getattr(vae.regularizer, "loss_weight", 1.0) if reg_weight is None else reg_weight)
        self.normalization = normalization or ("ldm" if kl else "taming")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"unknown loss normalization {self.normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
        self.disc_start, self.perceptual_weight = disc_start, perceptual_weight
        self.disc_weight, self.adaptive_cap = disc_weight, adaptive_cap
        self.perceptual = make_lpips(lpips_weights, pnet_rand) if perceptual_weight > 0 else None
        self.discriminator = NLayerDiscriminator(3, disc_width, disc_layers)
        learn = bool(learn_logvar) and self.normalization == "ldm"
        self.logvar = LogVariance(logvar_init, learn=learn)
        self.settings = {
            "normalization": self.normalization,
            "reg_weight": float(self.reg_weight),
            "perceptual_weight": float(perceptual_weight),
            "adaptive_cap": float(adaptive_cap),
            "adaptive_cap_times_pixels": self.normalization == "ldm",  # see adaptive_weight
            "learn_logvar": learn,
            "logvar_init": float(logvar_init),
        }

    def convention(self) -> dict:
        """The loss settings to record next to the weights (d2it.json), with the current log-variance."""
        return {**self.settings, "logvar": float(self.logvar.logvar.detach())}

    def train(self, mode: bool = True):
        """Train the discriminator; the LPIPS network always stays in eval mode."""
        super().train(mode)
        if self.perceptual is not None:
            self.perceptual.eval()
        return self

    def gan_active(self, step: int) -> bool:
        """True once `step` reaches `disc_start` (and the GAN has weight)."""
        return step >= self.disc_start and self.disc_weight > 0

    def adaptive_weight(self, nll: torch.Tensor, g_loss: torch.Tensor, cap_scale: float = 1.0) -> torch.Tensor:
        """min(||grad nll|| / ||grad g_loss||, cap · cap_scale) on the decoder's last layer, times disc_weight.

        VQGAN eq. 7 with DQ-VAE's cap. The ratio grows with the reconstruction's normalisation (a
        per-sample sum is 3·H·W times a pixel mean), so `generator_loss` scales the cap by the same
        factor under `ldm`: the GAN then weighs against the reconstruction as in DQ-VAE at any size.
        """
        last = self._last_layer()
        if not (torch.is_grad_enabled() and last.requires_grad and nll.requires_grad and g_loss.requires_grad):
            return torch.zeros((), device=nll.device)
        nll_grad = torch.autograd.grad(nll, last, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
        return weight.clamp(0.0, self.adaptive_cap * cap_scale).detach() * self.disc_weight

    def reconstruction_nll(self, images: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The reconstruction term, normalised as `self.normalization`, and its parts (means) as floats."""
        rec = (images - recon).abs()
        p_loss = torch.zeros((), device=images.device)
        if self.perceptual is not None:
            p_loss = self.perceptual(images.float(), recon.float())  # (B, 1, 1, 1)
            rec = rec + self.perceptual_weight * p_loss  # broadcast to every pixel, as LDM
        parts = {"l1": (images - recon).abs().mean().item(), "lpips": p_loss.mean().item()}
        if self.normalization == "taming":
            return rec.mean(), parts
        logvar = self.logvar()
        nll = rec / torch.exp(logvar) + logvar
        parts["logvar"] = float(logvar.detach())
        return nll.sum() / nll.shape[0], parts

    def generator_loss(self, images: torch.Tensor, out, step: int) -> tuple[torch.Tensor, dict]:
        """The autoencoder's loss for one batch and its parts as floats."""
        recon = out.recon
        nll, logs = self.reconstruction_nll(images, recon)
        reg = self.reg_weight * out.reg_loss
        loss = nll + reg
        logs.update(nll=nll.item(), reg=out.reg_loss.item())
        if self.gan_active(step):
            g_loss = -self.discriminator(recon).mean()
            cap_scale = images[0].numel() if self.normalization == "ldm" else 1.0
            d_weight = self.adaptive_weight(nll, g_loss, cap_scale)
            loss = loss + d_weight * g_loss
            logs.update(g_loss=g_loss.item(), d_weight=float(d_weight))
        else:
            logs.update(g_loss=0.0, d_weight=0.0)
        logs["loss"] = loss.item()
        return loss, logs

    def discriminator_loss(self, images: torch.Tensor, out, step: int) -> tuple[torch.Tensor, dict]:
        """Hinge loss of the discriminator; before `disc_start` a zero that still reaches its parameters."""
        if not self.gan_active(step):
            zero = sum(p.sum() for p in self.discriminator.parameters()) * 0.0
            return zero, {"d_loss": 0.0, "logits_real": 0.0, "logits_fake": 0.0}
        logits_real = self.discriminator(images.detach())
        logits_fake = self.discriminator(out.recon.detach())
        d_loss = hinge_d_loss(logits_real, logits_fake)
        logs = {
            "d_loss": d_loss.item(),
            "logits_real": logits_real.mean().item(),
            "logits_fake": logits_fake.mean().item(),
        }
        return d_loss, logs
