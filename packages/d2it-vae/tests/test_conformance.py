"""Every built-in VAE passes d2it's VAE conformance suite at tiny size."""

from d2it.testing.vae import VAEConformance

TINY = {"base_width": 8, "norm_groups": 4, "num_res_blocks": 1}


class TestDVAEKL(VAEConformance):
    name = "dvae-kl"
    overrides = TINY


class TestDVAEVQ(VAEConformance):
    name = "dvae-vq"
    overrides = TINY
    regularizer_options = {"codebook_size": 64}


class TestDVAEFSQ(VAEConformance):
    name = "dvae-kl"
    overrides = {**TINY, "regularizer": "fsq"}
    regularizer_options = {"levels": (5, 5, 5, 5)}


class TestVAEF8(VAEConformance):
    name = "vae-f8"
    overrides = TINY


class TestDVAEThreeGrains(VAEConformance):
    name = "dvae-kl"
    overrides = {**TINY, "grains": 3, "channel_mult": (1, 1, 2, 2, 2, 4), "attn_levels": 1}
    image_size = 64
    batch = 1
