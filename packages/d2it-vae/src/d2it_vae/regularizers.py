"""Latent regularizers: `kl` (diagonal Gaussian), `vq` (EMA vector quantizer), `fsq` (finite scalar quantization).

A regularizer turns each tap's encoder output `h` into posterior parameters and a regularization
loss. Interface (factory context `channels` = latent channels C; docs/components.md has the full contract):

- `in_channels`: channels the encoder head must produce (KL: 2C, VQ and FSQ: C); `channels`: C.
- `loss_weight`: the weight of its loss in the stage-1 objective (its `loss_weight` option).
- `posterior(h)`: one grain's parameters, no loss and no state update (what `VAE.encode` returns).
- `forward(hs, masks) -> (params, loss)`: every grain at once (coarsest first); `masks[g]` (B, 1, h, w)
  of 0/1 says which codes of grain g the image really uses, so each code is counted once. In
  training mode the VQ codebook is updated here, from the used codes only.
- `sample(params, generator=None, mode=False)`: latent codes of one grain; a regularizer that draws may
  also take `noise` (the standard normal draw to use, the shape of the codes), so a trainer can key the
  draw by sample.
"""

import math

import attrs
import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from d2it.errors import ConfigError


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


#################################################################################
#                                      KL                                       #
#################################################################################


@attrs.frozen
class KLConfig:
    """Options of the `kl` regularizer."""

    logvar_min: float = -30.0
    logvar_max: float = 20.0
    loss_weight: float = 1e-6  # LDM's kl_weight


class DiagonalGaussian(nn.Module):
    """Diagonal Gaussian posterior N(mean, exp(logvar)) with KL to N(0, I) (LDM's KL autoencoder)."""

    name = "kl"

    def __init__(self, channels: int, logvar_min: float = -30.0, logvar_max: float = 20.0, loss_weight: float = 1e-6):
        super().__init__()
        self.channels, self.in_channels = channels, 2 * channels
        self.loss_weight = float(loss_weight)
        self.logvar_min, self.logvar_max = logvar_min, logvar_max

    def posterior(self, h: torch.Tensor) -> torch.Tensor:
        """Mean and clamped log-variance stacked on channels (2C)."""
        mean, logvar = h.chunk(2, dim=1)
        return torch.cat([mean, logvar.clamp(self.logvar_min, self.logvar_max)], dim=1)

    def kl(self, params: torch.Tensor) -> torch.Tensor:
        """KL(q || N(0, I)) per code, summed over channels: (B, h, w)."""
        mean, logvar = params.float().chunk(2, dim=1)
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)

    def forward(self, hs, masks):
        """Parameters per grain and the KL summed over used codes, divided by the batch size (as LDM)."""
        params = [self.posterior(h) for h in hs]
        total = sum((self.kl(p) * m[:, 0]).sum() for p, m in zip(params, masks))
        return params, total / hs[0].shape[0]

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None, mode: bool = False, noise=None):
        """A draw mean + std * eps (eps = `noise` when given), or the mean when `mode`."""
        mean, logvar = params.chunk(2, dim=1)
        if mode:
            return mean
        if noise is not None:
            if tuple(noise.shape) != tuple(mean.shape):
                raise ConfigError(f"posterior noise has shape {tuple(noise.shape)}, the codes {tuple(mean.shape)}")
            eps = noise.to(device=mean.device, dtype=mean.dtype)
        else:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps


def make_kl(config: KLConfig, *, channels: int) -> DiagonalGaussian:
    """Factory of the `kl` regularizer."""
    return DiagonalGaussian(channels, config.logvar_min, config.logvar_max, config.loss_weight)


#################################################################################
#                                      VQ                                       #
#################################################################################


@attrs.frozen
class VQConfig:
    """Options of the `vq` regularizer."""

    codebook_size: int = 1024
    commitment: float = 0.25
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    dead_threshold: float = 1.0  # restart codes whose EMA usage falls below this (0 = never)
    loss_weight: float = 1.0  # weight of the commitment loss in the stage-1 objective (VQGAN's codebook_weight)

    def __attrs_post_init__(self):
        if self.codebook_size < 1 or not 0.0 <= self.ema_decay < 1.0 or self.commitment < 0:
            raise ConfigError("vq needs codebook_size >= 1, 0 <= ema_decay < 1 and commitment >= 0")
        _check_weight(self.loss_weight)


class EMAVectorQuantizer(nn.Module):
    """Nearest-code quantizer, codebook learned by EMA k-means (van den Oord 2017, App. A.1), straight-through."""

    name = "vq"

    def __init__(
        self,
        channels: int,
        codebook_size: int = 1024,
        commitment: float = 0.25,
        ema_decay: float = 0.99,
        ema_eps: float = 1e-5,
        dead_threshold: float = 1.0,
        loss_weight: float = 1.0,
    ):
        super().__init__()
        self.channels = self.in_channels = channels
        self.loss_weight = float(loss_weight)
        self.codebook_size, self.commitment = codebook_size, commitment
        self.decay, self.eps, self.dead_threshold = ema_decay, ema_eps, dead_threshold
        embed = torch.empty(codebook_size, channels).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_avg", embed.clone())

    def indices(self, h: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for every position: (B, h, w) int64."""
        flat = rearrange(h.float(), "b c h w -> (b h w) c")
        dist2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed.t() + self.embed.pow(2).sum(1)
        return dist2.argmin(dim=1).view(h.shape[0], h.shape[2], h.shape[3])

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Codes for indices: (B, h, w) -> (B, C, h, w)."""
        return rearrange(F.embedding(idx, self.embed), "b h w c -> b c h w")

    def posterior(self, h: torch.Tensor) -> torch.Tensor:
        """Quantized codes with the straight-through gradient to `h`."""
        q = self.lookup(self.indices(h)).to(h.dtype)
        return h + (q - h).detach()

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor):
        onehot = F.one_hot(idx, self.codebook_size).float() * weight[:, None]
        counts, sums = onehot.sum(0), onehot.t() @ flat
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n  # Laplace smoothing
        self.embed.copy_(self.embed_avg / smoothed[:, None])
        dead = self.cluster_size < self.dead_threshold
        used = flat[weight > 0]
        if dead.any() and len(used):
            # dead-code restart: move unused codes onto random encoder outputs of this batch
            pick = torch.randint(0, len(used), (int(dead.sum()),), device=flat.device)
            fresh = used[pick]
            if _distributed():
                dist.broadcast(fresh, src=0)
            self.embed[dead] = fresh
            self.embed_avg[dead] = fresh * self.dead_threshold
            self.cluster_size[dead] = self.dead_threshold

    def forward(self, hs, masks):
        """Straight-through codes per grain and the commitment loss averaged over used codes."""
        idxs = [self.indices(h) for h in hs]
        if self.training:
            flat = torch.cat([rearrange(h.detach().float(), "b c h w -> (b h w) c") for h in hs])
            weight = torch.cat([m.detach().float().flatten() for m in masks])
            self._ema_update(flat, torch.cat([i.flatten() for i in idxs]), weight)
        params, total, count = [], 0.0, hs[0].new_zeros(())
        for h, idx, m in zip(hs, idxs, masks):
            q = self.lookup(idx).to(h.dtype)
            total = total + ((h - q.detach()).pow(2).mean(dim=1) * m[:, 0]).sum()
            count = count + m.sum()
            params.append(h + (q - h).detach())
        return params, self.commitment * total / count.clamp(min=1.0)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None, mode: bool = False, noise=None):
        """The codes themselves: quantization is deterministic (`noise` is ignored)."""
        return params


def make_vq(config: VQConfig, *, channels: int) -> EMAVectorQuantizer:
    """Factory of the `vq` regularizer."""
    return EMAVectorQuantizer(
        channels,
        config.codebook_size,
        config.commitment,
        config.ema_decay,
        config.ema_eps,
        config.dead_threshold,
        config.loss_weight,
    )


#################################################################################
#                                      FSQ                                      #
#################################################################################


@attrs.frozen
class FSQConfig:
    """Options of the `fsq` regularizer: one quantization level count per latent channel."""

    levels: tuple[int, ...] = (8, 5, 5, 5)  # 1000 codes (Mentzer et al. 2023, Table 1)
    eps: float = 1e-3
    loss_weight: float = 1.0  # FSQ has no auxiliary loss; kept for a uniform interface

    def __attrs_post_init__(self):
        if not self.levels or any(level < 2 for level in self.levels):
            raise ConfigError(f"fsq needs at least one channel and every level >= 2, got levels {self.levels}")
        if not 0.0 <= self.eps < 1.0:
            raise ConfigError(f"fsq needs 0 <= eps < 1, got {self.eps}")
        _check_weight(self.loss_weight)


class FiniteScalarQuantizer(nn.Module):
    """Finite scalar quantization (Mentzer et al. 2023): bound each channel, round it to L levels, straight-through.

    Channel c is squashed by tanh into L_c levels (offset by ½ for even L_c), rounded with a
    straight-through gradient and divided by ⌊L_c/2⌋, so codes lie on a grid in [-1, 1]. There is no
    codebook to learn and no auxiliary loss; the implicit codebook has prod(L_c) entries.
    """

    name = "fsq"

    def __init__(self, channels: int, levels=(8, 5, 5, 5), eps: float = 1e-3, loss_weight: float = 1.0):
        super().__init__()
        if len(levels) != channels:
            raise ConfigError(
                f"fsq has {len(levels)} levels {tuple(levels)} for {channels} latent channels; "
                "give one level per channel"
            )
        self.channels = self.in_channels = channels
        self.levels, self.eps, self.loss_weight = tuple(int(v) for v in levels), float(eps), float(loss_weight)
        self.codebook_size = math.prod(self.levels)
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.float32), persistent=False)

    def _shape(self, like: torch.Tensor) -> torch.Tensor:
        return self._levels.to(like.device, like.dtype).reshape(1, -1, 1, 1)

    def bound(self, h: torch.Tensor) -> torch.Tensor:
        """tanh-squash each channel into (-(L-1)/2, (L-1)/2), shifted by ½ for even L (the paper's `bound`)."""
        levels = self._shape(h)
        half = (levels - 1) * (1 + self.eps) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(h + shift) * half - offset

    def posterior(self, h: torch.Tensor) -> torch.Tensor:
        """Codes on the grid {k / ⌊L/2⌋}, the rounding passed straight through to `h`."""
        bounded = self.bound(h)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        return rounded / torch.div(self._shape(h), 2, rounding_mode="floor")

    def indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Index of each code in the implicit codebook: (B, C, h, w) -> (B, h, w) int64."""
        levels = self._shape(codes)
        digits = torch.round(
            codes * torch.div(levels, 2, rounding_mode="floor") + torch.div(levels, 2, rounding_mode="floor")
        )
        basis = torch.cumprod(torch.cat([levels.new_ones(1, 1, 1, 1), levels[:, :-1]], dim=1), dim=1)
        return (digits * basis).sum(dim=1).long()

    def forward(self, hs, masks):
        """Codes per grain and a zero loss (FSQ needs no commitment or codebook loss)."""
        params = [self.posterior(h) for h in hs]
        return params, sum(p.sum() for p in params) * 0.0

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None, mode: bool = False, noise=None):
        """The codes themselves: quantization is deterministic (`noise` is ignored)."""
        return params


def make_fsq(config: FSQConfig, *, channels: int) -> FiniteScalarQuantizer:
    """Factory of the `fsq` regularizer."""
    return FiniteScalarQuantizer(channels, config.levels, config.eps, config.loss_weight)


def _check_weight(weight: float):
    if weight < 0:
        raise ConfigError(f"a regularizer's loss_weight must be >= 0, got {weight}")
