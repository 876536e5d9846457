"""The Dynamic VAE (`dvae-kl`, `dvae-vq`) and the fixed-grain LDM KL-f8 baseline (`vae-f8`).

Encoder: the LDM trunk with one tap per grain (F = 8 and 16 for two grains), each tap with its own
mid block and head feeding the regularizer. The grain coder picks a grain per region; neighbour
copying z = sum_g mask_g * up(z_g) puts every code on the F = 8 grid, and the LDM F = 8 decoder,
with a learned position embedding added to its input, reconstructs the image.
"""

import inspect
from dataclasses import dataclass

import attrs
import torch
from torch import nn

from d2it.config import fields_of
from d2it.errors import ConfigError, D2itError, DataError
from d2it.layout import neighbour_copy
from d2it.registry import default_registry
from d2it_vae.losses import VAELoss
from d2it_vae.modules import Decoder, HierarchicalEncoder, IdentityConv


@dataclass
class VAEOutput:
    """One forward pass: reconstruction, grain map, copied latent, per-grain parameters, regularization loss."""

    recon: torch.Tensor  # (B, 3, H, W)
    grain_map: torch.Tensor  # (B, h, w) int64
    z: torch.Tensor  # (B, C, H/8, W/8) copied layout
    params: list  # per grain, coarsest first
    reg_loss: torch.Tensor  # scalar, unweighted
    entropy: torch.Tensor | None  # (B, h, w) region scores, None for fixed-grain VAEs


#################################################################################
#                                    Configs                                    #
#################################################################################


@attrs.frozen
class VAEF8Config:
    """Options of the LDM KL-f8 autoencoder (`vae-f8`)."""

    base_width: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_levels: int = 0  # encoder levels (lowest resolutions) with self-attention
    mid_attn: bool = True
    decoder_mult: tuple[int, ...] = (1, 2, 4, 4)
    decoder_attn_levels: int = 0
    latent_channels: int = 4
    norm_groups: int = 32
    dropout: float = 0.0
    regularizer: str = "kl"
    quant_conv: bool = True  # LDM's 1x1 quant_conv / post_quant_conv (identity-initialised)


@attrs.frozen
class DVAEConfig:
    """Options of the Dynamic VAE with a KL posterior (`dvae-kl`)."""

    base_width: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # len(channel_mult) - grains = log2(downsample)
    num_res_blocks: int = 2
    attn_levels: int = 2
    mid_attn: bool = True
    decoder_mult: tuple[int, ...] = (1, 2, 4, 4)  # the LDM F=8 decoder
    decoder_attn_levels: int = 0
    latent_channels: int = 4
    grains: int = 2
    norm_groups: int = 32
    dropout: float = 0.0
    pos_embed: bool = True
    regularizer: str = "kl"
    grain_coder: str = "entropy"
    entropy_bins: int = 32
    entropy_sigma: float = 0.01
    fine_ratio: float = 0.5


@attrs.frozen
class DVAEVQConfig(DVAEConfig):
    """Options of the Dynamic VAE with an EMA vector quantizer (`dvae-vq`; its options: `--set regularizer.*`)."""

    regularizer: str = "vq"


#################################################################################
#                                     Model                                     #
#################################################################################


class DynamicVAE(nn.Module):
    """Hierarchical encoder, regularizer, grain coder, neighbour copying and LDM decoder."""

    def __init__(
        self,
        image_size: int,
        regularizer: nn.Module,
        coder: nn.Module | None = None,
        *,
        base_width: int = 128,
        channel_mult: tuple = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_levels: int = 2,
        mid_attn: bool = True,
        decoder_mult: tuple = (1, 2, 4, 4),
        decoder_attn_levels: int = 0,
        latent_channels: int = 4,
        grains: int = 2,
        norm_groups: int = 32,
        dropout: float = 0.0,
        pos_embed: bool = True,
        quant_conv: bool = False,
    ):
        super().__init__()
        if grains < 1 or len(channel_mult) < grains:
            raise ConfigError(f"channel_mult needs at least one level per grain ({grains}), got {tuple(channel_mult)}")
        self.downsample = 2 ** (len(channel_mult) - grains)
        if 2 ** (len(decoder_mult) - 1) != self.downsample:
            raise ConfigError(
                f"encoder finest factor {self.downsample} (2**(len(channel_mult) - grains)) does not match the "
                f"decoder's 2**(len(decoder_mult) - 1) = {2 ** (len(decoder_mult) - 1)}"
            )
        widths = [base_width * m for m in (*channel_mult, *decoder_mult)]
        if any(w % norm_groups for w in widths):
            raise ConfigError(f"every width {sorted(set(widths))} must be divisible by norm_groups={norm_groups}")
        self.region = self.downsample * 2 ** (grains - 1)
        if image_size % self.region:
            raise ConfigError(f"image size {image_size} is not divisible by the region size {self.region}")
        if grains > 1 and coder is None:
            raise ConfigError("a VAE with more than one grain needs a grain coder")
        self.image_size, self.grains, self.latent_channels = image_size, grains, latent_channels
        self.regularizer, self.coder = regularizer, coder
        self.encoder = HierarchicalEncoder(
            base_width=base_width,
            channel_mult=tuple(channel_mult),
            num_res_blocks=num_res_blocks,
            attn_levels=attn_levels,
            mid_attn=mid_attn,
            out_channels=regularizer.in_channels,
            taps=grains,
            groups=norm_groups,
            dropout=dropout,
        )
        self.decoder = Decoder(
            latent_channels=latent_channels,
            base_width=base_width,
            channel_mult=tuple(decoder_mult),
            num_res_blocks=num_res_blocks,
            attn_levels=decoder_attn_levels,
            mid_attn=mid_attn,
            groups=norm_groups,
            dropout=dropout,
        )
        # LDM's AutoencoderKL: 1x1 convs on the moments after the encoder and on z before the decoder
        self.quant_conv = IdentityConv(regularizer.in_channels) if quant_conv else None
        self.post_quant_conv = IdentityConv(latent_channels) if quant_conv else None
        side = image_size // self.downsample
        self.pos_embed = nn.Parameter(torch.zeros(1, latent_channels, side, side)) if pos_embed else None
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    # -- grains -------------------------------------------------------------------------------
    @property
    def thresholds(self) -> list[float]:
        """The k-1 entropy thresholds in use (empty for one grain)."""
        return list(self.coder.thresholds) if self.grains > 1 else []

    def set_thresholds(self, thresholds):
        """Use these k-1 thresholds (dataset percentiles from `d2it thresholds`) from now on."""
        if self.grains == 1:
            if len(thresholds):
                raise D2itError(f"a fixed-grain VAE takes no thresholds, got {len(thresholds)}")
            return
        self.coder.set_thresholds(thresholds)

    def _check_images(self, images: torch.Tensor):
        s = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise DataError(f"this VAE expects images of shape (B, 3, {s}, {s}), got {tuple(images.shape)}")

    def _grains(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._check_images(images)
        if self.grains == 1:
            b, side = images.shape[0], self.image_size // self.region
            return torch.zeros(b, side, side, dtype=torch.int64, device=images.device), None
        with torch.no_grad():
            scores = self.coder.scores(images)
        return self.coder.to_grains(scores), scores

    def grain_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 grain per region (0 = coarsest) from the entropy coder and thresholds."""
        return self._grains(images)[0]

    def grain_masks(self, grain_map: torch.Tensor) -> list[torch.Tensor]:
        """Per grain, (B, 1, h_g, w_g) float 0/1 on that grain's code grid: which codes the image uses."""
        masks = []
        for g in range(self.grains):
            m = (grain_map == g).float()
            s = 2**g  # codes per region side at grain g
            masks.append(m.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1).unsqueeze(1))
        return masks

    # -- latents ------------------------------------------------------------------------------
    def _moments(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The regularizer's inputs per grain: encoder heads (then `quant_conv`, when the VAE has one)."""
        hs = self.encoder(images)
        return hs if self.quant_conv is None else [self.quant_conv(h) for h in hs]

    def encode(self, images: torch.Tensor, grain_map: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Posterior parameters per grain, coarsest first, on each grain's full grid (the grain map selects later)."""
        self._check_images(images)
        return [self.regularizer.posterior(h) for h in self._moments(images)]

    def noise_shapes(self) -> list[tuple[int, int, int]]:
        """Per grain (coarsest first), the shape (C, h, w) of one image's posterior draw (`noise` of `forward`)."""
        side = self.image_size // self.downsample
        return [
            (self.latent_channels, side >> (self.grains - 1 - g), side >> (self.grains - 1 - g))
            for g in range(self.grains)
        ]

    def sample_latent(self, params, grain_map, generator=None, mode: bool = False, noise=None) -> torch.Tensor:
        """Copied-layout latent (B, C, H/8, W/8): each grain's draw (or mode) where the grain map selects it.

        `noise`: per grain, the standard normal draw to use (shapes as `noise_shapes`), instead of drawing.
        """
        if len(params) != self.grains:
            raise D2itError(f"expected parameters of {self.grains} grain(s), got {len(params)}")
        if noise is None or "noise" not in inspect.signature(self.regularizer.sample).parameters:
            # a regularizer that cannot take the draw makes its own (from `generator`)
            codes = [self.regularizer.sample(p, generator=generator, mode=mode) for p in params]
        else:
            if len(noise) != self.grains:
                raise D2itError(f"expected noise for {self.grains} grain(s), got {len(noise)}")
            codes = [self.regularizer.sample(p, generator=generator, mode=mode, noise=e) for p, e in zip(params, noise)]
        return neighbour_copy(codes, grain_map.to(codes[0].device))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images from a copied-layout latent; the learned position embedding is added first."""
        side = self.image_size // self.downsample
        if z.ndim != 4 or tuple(z.shape[1:]) != (self.latent_channels, side, side):
            raise DataError(
                f"this VAE decodes latents of shape (B, {self.latent_channels}, {side}, {side}), got {tuple(z.shape)}"
            )
        if self.pos_embed is not None:
            z = z + self.pos_embed.to(z.dtype)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None, mode: bool = False, noise=None
    ) -> VAEOutput:
        """Grain map, encoding with each code's regularization counted once, neighbour copying, decoding.

        `noise`: the posterior draws to use (as `sample_latent`), e.g. keyed by sample by the trainer.
        """
        grain_map, scores = self._grains(images)
        params, reg_loss = self.regularizer(self._moments(images), self.grain_masks(grain_map))
        z = self.sample_latent(params, grain_map, generator=generator, mode=mode, noise=noise)
        return VAEOutput(self.decode(z), grain_map, z, params, reg_loss, scores)

    # -- training helpers ---------------------------------------------------------------------
    def last_layer(self) -> torch.Tensor:
        """The decoder's output conv weight, for the adaptive GAN weight."""
        return self.decoder.conv_out.weight

    def example_inputs(self, batch: int) -> tuple:
        """A random image batch of this VAE's size on its device."""
        g = torch.Generator().manual_seed(0)
        images = torch.rand(batch, 3, self.image_size, self.image_size, generator=g) * 2 - 1
        return (images.to(self.last_layer().device),)

    def make_loss(self, **options) -> nn.Module:
        """The stage-1 loss (L1 + LPIPS + PatchGAN hinge + regularizer); options as `VAELoss`."""
        return VAELoss(self, **options)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, grains={self.grains}, downsample={self.downsample}"


#################################################################################
#                                   Factories                                   #
#################################################################################


_MODEL_KEYS = (
    "base_width", "channel_mult", "num_res_blocks", "attn_levels", "mid_attn", "decoder_mult",
    "decoder_attn_levels", "latent_channels", "norm_groups", "dropout",
)  # fmt: skip


def _create_part(kind: str, name: str, candidates: dict, **context):
    """Create a registered part with those candidate options that its config accepts."""
    registry = default_registry()
    accepted = set(fields_of(registry.get(kind, name).config))
    overrides = {key: value for key, value in candidates.items() if key in accepted}
    return registry.create(kind, name, overrides, where=f"vae.{kind}", **context)


def _regularizer(config, options: dict | None):
    """The registered regularizer `config.regularizer` with its own options (the record's `regularizer` slot)."""
    return default_registry().create(
        "regularizer", config.regularizer, dict(options or {}), where="regularizer", channels=config.latent_channels
    )


def make_dvae(config: DVAEConfig, *, image_size: int, regularizer_options: dict | None = None) -> DynamicVAE:
    """Factory of `dvae-kl` / `dvae-vq`: regularizer (with `regularizer_options`) and grain coder from the registry."""
    downsample = 2 ** max(len(config.channel_mult) - config.grains, 0)
    coder_options = {
        "region": downsample * 2 ** (config.grains - 1),
        "grains": config.grains,
        "bins": config.entropy_bins,
        "sigma": config.entropy_sigma,
        "fine_ratio": config.fine_ratio,
    }
    coder = _create_part("grain_coder", config.grain_coder, coder_options)
    kwargs = {key: getattr(config, key) for key in _MODEL_KEYS}
    regularizer = _regularizer(config, regularizer_options)
    return DynamicVAE(image_size, regularizer, coder, grains=config.grains, pos_embed=config.pos_embed, **kwargs)


def make_vae_f8(config: VAEF8Config, *, image_size: int, regularizer_options: dict | None = None) -> DynamicVAE:
    """Factory of `vae-f8`: the standard LDM KL-f8 autoencoder (one grain, no position embedding)."""
    kwargs = {key: getattr(config, key) for key in _MODEL_KEYS}
    regularizer = _regularizer(config, regularizer_options)
    return DynamicVAE(image_size, regularizer, None, grains=1, pos_embed=False, quant_conv=config.quant_conv, **kwargs)
