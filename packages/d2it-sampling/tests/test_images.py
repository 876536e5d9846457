"""`d2it_sampling.Pipeline`: generate's samples as PIL images, arrays or tensors, with `generate`'s seeding."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_pipeline import make_system, run

from d2it.errors import ConfigError
from d2it_sampling import Pipeline, to_uint8


def test_pipeline_outputs_are_generates_samples():
    system = make_system()
    pipe = Pipeline(system, cfg_scale=1.0, steps=6)
    want = run(system, seed=4)  # generate's (0, 1, 2, 1) with 6 steps
    images = pipe([0, 1, 2, 1], seed=4)
    assert all(isinstance(im, Image.Image) and im.size == (32, 32) for im in images)
    assert np.array_equal(np.stack([np.asarray(im) for im in images]), to_uint8(want.images))
    assert np.array_equal(pipe([0, 1, 2, 1], seed=4, output_type="uint8"), to_uint8(want.images))
    torch.testing.assert_close(pipe([0, 1, 2, 1], seed=4, output_type="pt"), (want.images + 1) / 2)
    assert pipe([0, 1, 2, 1], seed=4, output_type="np").shape == (4, 32, 32, 3)
    generation = pipe([0, 1, 2, 1], seed=4, output_type="generation")
    assert torch.equal(generation.grain_maps, want.grain_maps)
    # sample i of a seed, alone: first_index; a batch size never changes it
    alone = pipe(2, seed=4, first_index=2, batch_size=1, output_type="uint8")[0]
    assert np.array_equal(alone, to_uint8(want.images)[2])


def test_pipeline_resolves_its_sampler_as_d2it_sample_does():
    system = make_system(sampler="ddim", options={"sampler": {"eta": 0.5}})
    assert Pipeline(system).sampler_options == {"eta": 0.5}  # the system's sampler keeps its recorded options
    assert Pipeline(system, sampler_options={"steps": 3}).sampler_options == {"eta": 0.5, "steps": 3}
    assert Pipeline(system, sampler="dpmpp-2m").sampler_options == {}  # another sampler starts from its defaults
    with pytest.raises(ConfigError, match="batch_size"):
        Pipeline(system, batch_size=0)


def test_pipeline_refuses_images_without_a_vae():
    pipe = Pipeline(make_system(vae=False), cfg_scale=1.0, steps=2)
    with pytest.raises(ConfigError, match="no VAE"):
        pipe([0])
    assert pipe([0], output_type="generation").images is None
    with pytest.raises(ConfigError, match="output_type"):
        pipe([0], output_type="latent")


def test_to_uint8_rounds_as_dit():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0]).reshape(1, 1, 5).expand(3, 1, 5)
    assert to_uint8(x)[0, :, 0].tolist() == [0, 64, 128, 255, 255]
    with pytest.raises(ConfigError, match="3 or 4 dimensions"):
        to_uint8(torch.zeros(2, 2))
