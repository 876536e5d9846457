"""Interop with published weights and the Hugging Face Hub: importers (DiT, SD-VAE), push, hf:// systems.

A click-free library: `d2it import` and `d2it push` only parse their options and call these.
"""

from d2it_cli.interop.dit import import_dit, read_dit_checkpoint
from d2it_cli.interop.sd_vae import SD_VAE_HUB, import_sd_vae, read_sd_vae

__all__ = ["SD_VAE_HUB", "import_dit", "import_sd_vae", "read_dit_checkpoint", "read_sd_vae"]
