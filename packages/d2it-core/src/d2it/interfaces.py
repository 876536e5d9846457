"""The interfaces components of each kind provide, so packages can use each other's parts unseen.

These are documentation and static types only (typing.Protocol); nothing checks them at run time.
Tensors: images float in [-1, 1] NCHW; grain maps int64 (B, h, w) with 0 the coarsest grain;
latents on the finest grid in the copied ("neighbour copy") layout, (B, C, H, W).
"""

from typing import Protocol

import torch


class VAE(Protocol):
    """A (dynamic) VAE; `vae-f8`-style fixed-grain VAEs have grains == 1."""

    latent_channels: int  # C
    downsample: int  # pixels per finest latent cell (8)
    grains: int  # k; the grain map has one entry per region of 2**(k-1) x 2**(k-1) cells

    def grain_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, h, w) grain per region from the image (entropy coder and stored thresholds)."""

    def encode(self, images: torch.Tensor, grain_map: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per-grain latent parameters, coarsest first (KL: mean and log-variance stacked on channels)."""

    def sample_latent(self, params, grain_map, generator=None, mode: bool = False) -> torch.Tensor:
        """The copied-layout latent z (B, C, H, W) drawn from (or the mode of) the parameters."""

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images from a copied-layout latent."""


class ContentModel(Protocol):
    """A noise predictor: DiT (grain_map ignored) or the Dynamic Content Transformer."""

    in_channels: int
    out_channels: int  # 2 * in_channels with learned variance
    learn_sigma: bool
    input_size: int
    num_classes: int  # the null (unconditional) class is index num_classes

    def __call__(self, x, t, y, grain_map=None) -> torch.Tensor:
        """Predicted noise (and variance interpolation) for x_t at timesteps t, classes y."""


class GrainPredictor(Protocol):
    """Produces grain maps for classes."""

    trainable: bool

    def sample(self, classes: torch.Tensor, generator: torch.Generator | None = None, **options) -> torch.Tensor:
        """(B, grid, grid) int64 grain maps."""

    def loss(self, grain_maps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Scalar training loss (trainable predictors only)."""
