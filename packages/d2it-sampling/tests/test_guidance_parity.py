"""`guidance.channels`: `dit` equals DiT's `forward_with_cfg`, `all` standard CFG; records carry the option."""

import pytest
import torch

import d2it
from d2it.errors import ConfigError, D2itError
from d2it.system import SystemRecord, build
from d2it_sampling.guidance import conditioned_model
from d2it_sampling.pipeline import generate

TINY = {"depth": 1, "hidden_size": 32, "num_heads": 2}


def dit_forward_with_cfg(forward, x, t, y, cfg_scale):
    """DiT's `DiT.forward_with_cfg` (models.py), restated: guidance on eps[:, :3] only."""
    half = x[: len(x) // 2]
    combined = torch.cat([half, half], dim=0)
    model_out = forward(combined, t, y)
    eps, rest = model_out[:, :3], model_out[:, 3:]
    cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
    half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    eps = torch.cat([half_eps, half_eps], dim=0)
    return torch.cat([eps, rest], dim=1)


def _dit(class_dropout=0.1):
    torch.manual_seed(0)
    model = d2it.create(
        "backbone", "dit-s", {**TINY, "class_dropout": class_dropout},
        input_size=8, in_channels=4, num_classes=10, grains=None, attention=None,
    )  # fmt: skip
    for p in model.parameters():  # DiT zero-initialises its output layers: make them matter
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def test_dit_channels_equal_forward_with_cfg():
    model = _dit()
    g = torch.Generator().manual_seed(1)
    x, t, y = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([5, 500, 999]), torch.tensor([1, 2, 3])
    ours = conditioned_model(model, y, cfg_scale=4.0, channels="dit")(x, t)
    y_in = torch.cat([y, torch.full_like(y, 10)])
    reference = dit_forward_with_cfg(model, torch.cat([x, x]), torch.cat([t, t]), y_in, 4.0)[:3]
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    # channel 3 and the variance are unguided: the conditional half's
    cond = model(x, t, y)
    torch.testing.assert_close(ours[:, 3:], cond[:, 3:])


def test_all_channels_guide_every_eps_channel():
    model = _dit()
    g = torch.Generator().manual_seed(2)
    x, t, y = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700]), torch.tensor([4, 9])
    ours = conditioned_model(model, y, cfg_scale=2.5, channels="all")(x, t)
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 10))
    torch.testing.assert_close(ours[:, :4], uncond[:, :4] + 2.5 * (cond[:, :4] - uncond[:, :4]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[:, 4:], cond[:, 4:], rtol=1e-5, atol=1e-5)
    dit = conditioned_model(model, y, cfg_scale=2.5, channels="dit")(x, t)
    assert not torch.allclose(dit[:, 3], ours[:, 3])
    torch.testing.assert_close(dit[:, :3], ours[:, :3], rtol=1e-5, atol=1e-5)


def test_unknown_channels_and_missing_null_class_are_user_errors():
    with pytest.raises(ConfigError, match="all, dit"):
        conditioned_model(_dit(), torch.tensor([1]), cfg_scale=2.0, channels="rgb")
    with pytest.raises(ConfigError, match="null class"):
        conditioned_model(_dit(class_dropout=0.0), torch.tensor([1]), cfg_scale=2.0)


def _record(**guidance):
    options = {"backbone": TINY}
    if guidance:
        options["guidance"] = guidance
    return SystemRecord(backbone="dit-s", image_size=64, num_classes=10, options=options)


def test_record_carries_guidance_channels():
    assert _record().canonical().options["guidance"] == {"channels": "all"}
    assert _record(channels="dit").canonical().options["guidance"] == {"channels": "dit"}
    with pytest.raises(D2itError, match="guidance"):
        _record(channels="three").canonical()
    with pytest.raises(D2itError, match="no option"):
        _record(chanels="dit").canonical()


def test_generate_follows_the_records_guidance_channels():
    def run(record, **kwargs):
        torch.manual_seed(0)
        system = build(record)
        for p in system.content.parameters():
            torch.nn.init.normal_(p, std=0.05)
        return generate(system, [1, 2], seed=3, steps=3, cfg_scale=3.0, progress=False, **kwargs).latents

    dit, default = run(_record(channels="dit")), run(_record())
    torch.testing.assert_close(dit, run(_record(), guidance_channels="dit"))
    assert not torch.allclose(dit, default)
