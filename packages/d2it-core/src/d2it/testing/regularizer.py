"""Conformance suite for latent regularizers (kind `regularizer`): shapes, gradients, the posterior/sample contract.

A regularizer is an `nn.Module` built by `factory(config, *, channels)` (C = `channels` latent
channels) with

    channels: int = C; in_channels: int, the channels the encoder head must produce for it;
    loss_weight: float, the weight of its loss in the stage-1 objective (its `loss_weight` option);
    posterior(h) -> params: one grain's parameters from the encoder output h (B, in_channels, h, w),
        (B, P, h, w); no loss and no state update;
    forward(hs, masks) -> (params, loss): every grain at once, coarsest first; masks[g] (B, 1, h_g, w_g)
        of 0/1 marks the codes an image really uses, so a code outside its mask changes nothing;
        loss is a finite scalar >= 0; only in training mode may it update state (a VQ codebook);
    sample(params, generator=None, mode=False) -> codes (B, C, h, w): a draw, or with `mode` the
        deterministic code, through which gradients reach h (straight-through for quantizers).

Subclass, set `name` (and a small `overrides`), and pytest runs every check.
"""

import attrs
import pytest
import torch

from d2it.config import build_config, config_to_dict
from d2it.errors import D2itError
from d2it.registry import default_registry


class RegularizerConformance:
    """Subclass with `name = "my-regularizer"`, optionally `overrides` and `channels`."""

    name: str = ""
    overrides: dict = {}
    channels: int = 4
    batch: int = 2
    sizes: tuple = (4, 8)  # grid of each grain's codes, coarsest first

    # -- helpers ----------------------------------------------------------------------------
    def make(self, seed: int = 0):
        torch.manual_seed(seed)
        return default_registry().create("regularizer", self.name, dict(self.overrides), channels=self.channels)

    def inputs(self, reg, seed: int = 0, requires_grad: bool = False):
        g = torch.Generator().manual_seed(seed)
        hs = [torch.randn(self.batch, reg.in_channels, s, s, generator=g) for s in self.sizes]
        return [h.requires_grad_(requires_grad) for h in hs]

    def masks(self, seed: int = 1):
        """Complementary masks: each fine 2x2 block is used by the fine grain or by its coarse code."""
        g = torch.Generator().manual_seed(seed)
        coarse = (torch.rand(self.batch, 1, self.sizes[0], self.sizes[0], generator=g) < 0.5).float()
        fine = 1.0 - coarse.repeat_interleave(2, -1).repeat_interleave(2, -2)
        return [coarse, fine]

    # -- checks -----------------------------------------------------------------------------
    def test_declares_channels_and_loss_weight(self):
        reg = self.make()
        assert reg.channels == self.channels
        assert isinstance(reg.in_channels, int) and reg.in_channels >= 1
        assert isinstance(reg.loss_weight, float) and reg.loss_weight >= 0
        spec = default_registry().get("regularizer", self.name)
        assert "loss_weight" in attrs.fields_dict(spec.config), "the loss weight must be a `loss_weight` option"
        tuned = default_registry().create(
            "regularizer", self.name, {**self.overrides, "loss_weight": 0.125}, channels=self.channels
        )
        assert tuned.loss_weight == 0.125

    def test_shapes(self):
        reg = self.make().eval()
        for h in self.inputs(reg):
            params = reg.posterior(h)
            assert params.ndim == 4 and params.shape[0] == self.batch and params.shape[2:] == h.shape[2:]
            for mode in (True, False):
                codes = reg.sample(params, generator=torch.Generator().manual_seed(0), mode=mode)
                assert codes.shape == (self.batch, self.channels, *h.shape[2:])
                assert torch.isfinite(codes).all()

    def test_forward_matches_posterior_and_gives_a_scalar_loss(self):
        reg = self.make().eval()
        hs = self.inputs(reg)
        params, loss = reg(hs, self.masks())
        assert len(params) == len(hs)
        for p, h in zip(params, hs):
            torch.testing.assert_close(p, reg.posterior(h))
        assert loss.ndim == 0 and torch.isfinite(loss) and float(loss) >= 0

    def test_gradients_reach_the_encoder_output(self):
        """Through the codes (straight-through for quantizers) and through the loss."""
        reg = self.make().train()
        hs = self.inputs(reg, requires_grad=True)
        params, loss = reg(hs, self.masks())
        codes = [reg.sample(p, generator=torch.Generator().manual_seed(0)) for p in params]
        weights = [torch.randn(c.shape, generator=torch.Generator().manual_seed(i)) for i, c in enumerate(codes)]
        total = sum((c * w).sum() for c, w in zip(codes, weights)) + loss
        total.backward()
        for h in hs:
            assert h.grad is not None and torch.isfinite(h.grad).all()
            assert h.grad.abs().sum() > 0, "no gradient reaches the encoder output"

    def test_codes_outside_the_mask_do_not_count(self):
        reg = self.make().eval()
        hs, masks = self.inputs(reg), self.masks()
        _, loss = reg(hs, masks)
        moved = [
            h + 3.0 * (1 - m) * torch.randn(h.shape, generator=torch.Generator().manual_seed(9))
            for h, m in zip(hs, masks)
        ]
        _, loss_moved = reg(moved, masks)
        torch.testing.assert_close(loss_moved, loss, rtol=1e-5, atol=1e-6)

    def test_mode_is_deterministic_and_eval_changes_no_state(self):
        reg = self.make().eval()
        hs, masks = self.inputs(reg), self.masks()
        before = {k: v.clone() for k, v in reg.state_dict().items()}
        (p1, l1), (p2, l2) = reg(hs, masks), reg(hs, masks)
        for a, b in zip(p1, p2):
            assert torch.equal(a, b)
            assert torch.equal(reg.sample(a, mode=True), reg.sample(b, mode=True))
        assert torch.equal(l1, l2)
        for key, value in reg.state_dict().items():
            assert torch.equal(value, before[key]), f"eval-mode forward changed {key}"
        draws = [reg.sample(p1[0], generator=torch.Generator().manual_seed(4)) for _ in range(2)]
        assert torch.equal(draws[0], draws[1]), "a draw must depend only on its generator"

    def test_config_round_trip(self):
        spec = default_registry().get("regularizer", self.name)
        config = spec.make_config(dict(self.overrides))
        assert build_config(spec.config, config_to_dict(config)) == config
        with pytest.raises(D2itError):
            spec.make_config({"no_such_option": 1})
