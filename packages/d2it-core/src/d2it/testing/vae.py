"""Conformance suite for VAEs (the `vae` contract in docs/components.md).

Subclass `VAEConformance`, set `name` to your registered VAE, `overrides` to a tiny config and
`image_size` to a small size (32 or 64), and pytest runs every check. The gradient check trains
through `forward` and `make_loss(pnet_rand=True, disc_start=0)`; list parameters that legitimately
receive no gradient from that loss (e.g. a part used only at sampling time) as fnmatch patterns in
`unused_parameters`. Codebooks updated by EMA are buffers, not parameters, and need no entry.
"""

import fnmatch

import pytest
import torch

from d2it.config import build_config, config_to_dict
from d2it.errors import D2itError
from d2it.registry import default_registry


class VAEConformance:
    """Subclass with `name = "my-vae"`, a tiny `overrides` dict and a small `image_size`."""

    name: str = ""
    overrides: dict = {}
    regularizer_options: dict = {}  # options of its regularizer (a VAE with a `regularizer` option gets them)
    image_size: int = 32
    batch: int = 2
    unused_parameters: tuple = ()

    def make(self, seed: int = 0):
        torch.manual_seed(seed)
        context = {"regularizer_options": dict(self.regularizer_options)} if self.regularizer_options else {}
        return default_registry().create("vae", self.name, dict(self.overrides), image_size=self.image_size, **context)

    def images(self, seed: int = 0) -> torch.Tensor:
        """Images with flat and noisy halves, so detailed and smooth regions both occur."""
        g = torch.Generator().manual_seed(seed)
        s = self.image_size
        x = torch.rand(self.batch, 3, s, s, generator=g) * 2 - 1
        x[:, :, :, : s // 2] = torch.rand(self.batch, 3, 1, 1, generator=g) * 2 - 1
        return x

    def region(self, vae) -> int:
        return vae.downsample * 2 ** (vae.grains - 1)

    def mix_grains(self, vae, images):
        """Thresholds between distinct scores of `images`, so every grain occurs (no-op for one grain)."""
        if vae.grains == 1:
            return
        with torch.no_grad():
            scores = vae(images).entropy.flatten().unique()  # sorted
        n = len(scores)
        assert n >= vae.grains, "the test images need more distinct region entropies than grains"
        vae.set_thresholds(
            [float(scores[n * g // vae.grains - 1] + scores[n * g // vae.grains]) / 2 for g in range(1, vae.grains)]
        )

    def test_attributes(self):
        vae = self.make()
        assert vae.latent_channels >= 1 and vae.grains >= 1
        assert vae.downsample >= 1 and self.image_size % self.region(vae) == 0
        assert len(vae.thresholds) == vae.grains - 1

    def test_latent_shapes(self):
        vae = self.make().eval()
        x = self.images()
        params = vae.encode(x)
        assert len(params) == vae.grains
        side = self.image_size // vae.downsample
        for g, p in enumerate(params):
            s = side // 2 ** (vae.grains - 1 - g)
            assert p.shape[0] == self.batch and tuple(p.shape[2:]) == (s, s), (g, p.shape)
            assert p.shape[1] in (vae.latent_channels, 2 * vae.latent_channels)
        z = vae.sample_latent(params, vae.grain_map(x), mode=True)
        assert z.shape == (self.batch, vae.latent_channels, side, side)

    def test_grain_map_range(self):
        vae = self.make().eval()
        x = self.images()
        gm = vae.grain_map(x)
        side = self.image_size // self.region(vae)
        assert gm.dtype == torch.int64 and gm.shape == (self.batch, side, side)
        assert int(gm.min()) >= 0 and int(gm.max()) <= vae.grains - 1

    def test_round_trip_shapes(self):
        vae = self.make().eval()
        x = self.images()
        with torch.no_grad():
            z = vae.sample_latent(vae.encode(x), vae.grain_map(x))
            recon = vae.decode(z)
            out = vae(x)
        assert recon.shape == x.shape and out.recon.shape == x.shape
        assert torch.isfinite(recon).all()
        assert out.z.shape == z.shape and out.grain_map.shape == vae.grain_map(x).shape
        assert out.reg_loss.ndim == 0 and torch.isfinite(out.reg_loss)
        assert (out.entropy is None) == (vae.grains == 1)
        assert vae.last_layer().requires_grad
        (example,) = vae.example_inputs(self.batch)
        assert example.shape == x.shape

    def test_latent_follows_grain_layout(self):
        vae = self.make().eval()
        x = self.images()
        self.mix_grains(vae, x)
        gm = vae.grain_map(x)
        with torch.no_grad():
            z = vae.sample_latent(vae.encode(x), gm, generator=torch.Generator().manual_seed(0))
        for g in range(vae.grains - 1):  # every code of a coarser grain is constant over its cells
            cell = 2 ** (vae.grains - 1 - g)
            blocks = z.unfold(2, cell, cell).unfold(3, cell, cell)  # (B, C, h, w, cell, cell)
            spread = blocks.amax((-1, -2)) - blocks.amin((-1, -2))
            region = self.region(vae) // vae.downsample
            coarse = (gm == g).repeat_interleave(region // cell, -2).repeat_interleave(region // cell, -1)
            assert coarse.any() and spread.amax(1)[coarse].max() == 0

    def test_deterministic_under_seed(self):
        a, b = self.make(seed=3), self.make(seed=3)
        for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(pa, pb), na
        a.eval()
        x = self.images()
        with torch.no_grad():
            params = a.encode(x)
            gm = a.grain_map(x)
            z1 = a.sample_latent(params, gm, generator=torch.Generator().manual_seed(5))
            z2 = a.sample_latent(params, gm, generator=torch.Generator().manual_seed(5))
            assert torch.equal(z1, z2)
            assert torch.equal(a.decode(z1), a.decode(z2))
            assert torch.equal(a.sample_latent(params, gm, mode=True), a.sample_latent(params, gm, mode=True))

    def test_gradients_reach_every_parameter(self):
        vae = self.make()
        x = self.images()
        self.mix_grains(vae, x)
        vae.train()
        loss_fn = vae.make_loss(disc_start=0, pnet_rand=True)
        out = vae(x)
        loss, logs = loss_fn.generator_loss(x, out, step=0)
        assert loss.ndim == 0 and torch.isfinite(loss)
        assert all(isinstance(v, float) for v in logs.values())
        loss.backward()
        dead = [
            n
            for n, p in vae.named_parameters()
            if p.requires_grad
            and (p.grad is None or not p.grad.any())
            and not any(fnmatch.fnmatch(n, pat) for pat in self.unused_parameters)
        ]
        assert not dead, f"no gradient reached {dead}"
        d_loss, _ = loss_fn.discriminator_loss(x, out, step=0)
        d_loss.backward()
        dead = [n for n, p in loss_fn.discriminator.named_parameters() if p.grad is None or not p.grad.any()]
        assert not dead, f"no gradient reached discriminator {dead}"

    def test_thresholds_round_trip(self):
        vae = self.make().eval()
        x = self.images()
        k = vae.grains
        if k == 1:
            vae.set_thresholds([])
            assert vae.thresholds == []
            with pytest.raises(D2itError):
                vae.set_thresholds([1.0])
            return
        wanted = [0.25 * (g + 1) for g in range(k - 1)]
        vae.set_thresholds(wanted)
        assert vae.thresholds == pytest.approx(wanted)
        with pytest.raises(D2itError):
            vae.set_thresholds(wanted + [9.0])
        vae.set_thresholds([-1.0] * (k - 1))  # every entropy exceeds every threshold: all finest
        assert (vae.grain_map(x) == k - 1).all()
        vae.set_thresholds([1e3] * (k - 1))
        assert (vae.grain_map(x) == 0).all()

    def test_config_round_trip(self):
        spec = default_registry().get("vae", self.name)
        config = spec.make_config(dict(self.overrides))
        assert build_config(spec.config, config_to_dict(config)) == config
