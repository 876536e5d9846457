"""Imports against diffusers (a test-only dependency, random weights, nothing downloaded).

Our `dit-*` equals diffusers' `DiTTransformer2DModel` with mapped weights, our `vae-f8` equals its
`AutoencoderKL`, and a 10-step DDPM run of an imported DiT system equals `DiTPipeline` with
`DDPMScheduler` on the same noise and labels.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import d2it
from d2it import system as systems
from d2it.errors import CheckpointError, D2itError
from d2it_cli.interop import import_dit, import_sd_vae, read_sd_vae
from d2it_cli.interop.dit import dit_geometry, dit_to_diffusers
from d2it_sampling import diffusion as diffusion_module
from d2it_sampling.guidance import conditioned_model
from d2it_sampling.pipeline import make_diffusion

diffusers = pytest.importorskip("diffusers")
ddpm_module = pytest.importorskip("diffusers.schedulers.scheduling_ddpm")

HIDDEN, HEADS, DEPTH, LATENT = 32, 2, 2, 8
# a tiny SD-style VAE: four levels (factor 8) of width 32, one residual block each
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=64, scaling_factor=0.18215,
)  # fmt: skip


def _randomise(module, std=0.05, seed=0):
    """Random weights everywhere (DiT zero-initialises its modulation and output layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def official_dit_state(learn_sigma=True, class_dropout=0.1, num_classes=1000, seed=0) -> dict:
    """A random DiT state dict in the official layout (DiT's models.py names: ours are the same)."""
    torch.manual_seed(seed)
    model = d2it.create(
        "backbone", "dit-s",
        {"depth": DEPTH, "hidden_size": HIDDEN, "num_heads": HEADS, "learn_sigma": learn_sigma,
         "class_dropout": class_dropout},
        input_size=LATENT, in_channels=4, num_classes=num_classes, grains=None, attention=None,
    )  # fmt: skip
    return {k: v.clone() for k, v in _randomise(model, seed=seed).state_dict().items()}


def diffusers_dit(state: dict, learn_sigma=True):
    """diffusers' DiT with `state` mapped in; its timestep frequencies set to DiT's.

    diffusers builds DiT's timestep embedding with `downscale_freq_shift=1` (frequencies
    exp(-ln(1e4) i / (half - 1))) where DiT's models.py divides by `half`; real DiT checkpoints
    were trained with DiT's, which is what `dit-*` computes, so the oracle is set to DiT's here.
    """
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=HEADS, attention_head_dim=HIDDEN // HEADS, in_channels=4,
        out_channels=8 if learn_sigma else 4, num_layers=DEPTH, sample_size=LATENT, patch_size=2,
        num_embeds_ada_norm=1000, norm_eps=1e-6,
    )  # fmt: skip
    missing, unexpected = model.load_state_dict(dit_to_diffusers(state), strict=False)
    assert not unexpected and all(k == "pos_embed.pos_embed" for k in missing), (missing, unexpected)
    for block in model.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    return model.eval()


def write_official_checkpoint(tmp_path, **kwargs):
    path = tmp_path / "DiT-tiny.pt"
    torch.save(official_dit_state(**kwargs), path)  # DiT publishes exactly this: torch.save(state_dict)
    return path


def tiny_sd_vae_folder(tmp_path, seed=1):
    """A random diffusers AutoencoderKL saved as a folder (config.json + safetensors)."""
    torch.manual_seed(seed)
    vae = _randomise(diffusers.AutoencoderKL(**TINY_VAE), std=0.05, seed=seed)
    with torch.no_grad():  # keep GroupNorm scales near 1 so activations stay moderate
        for name, p in vae.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)
    folder = tmp_path / "sd-vae"
    vae.save_pretrained(folder, safe_serialization=True)
    return folder, vae.eval()


# -- backbone ----------------------------------------------------------------------------------------
def test_imported_dit_equals_diffusers_transformer(tmp_path):
    ckpt = write_official_checkpoint(tmp_path)
    system = import_dit(ckpt, tmp_path / "sys", num_heads=HEADS)
    ours = systems.load(tmp_path / "sys").content.eval()
    reference = diffusers_dit(torch.load(ckpt, weights_only=True))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, LATENT, LATENT, generator=g)
    t, y = torch.tensor([0, 411, 999]), torch.tensor([7, 1000, 999])  # 1000: the null class
    with torch.no_grad():
        want = reference(x, timestep=t, class_labels=y).sample
        got = ours(x, t, y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert system.record.options["guidance"] == {"channels": "dit"}


def test_round_trip_of_an_official_layout_checkpoint(tmp_path):
    state = official_dit_state(learn_sigma=True)
    ckpt = write_official_checkpoint(tmp_path)
    import_dit(ckpt, tmp_path / "sys", num_heads=HEADS)
    record, doc = systems.read_record(tmp_path / "sys")
    assert (record.backbone, record.image_size, record.num_classes, record.vae) == ("dit-s", 64, 1000, None)
    assert record.options["backbone"]["depth"] == DEPTH and record.options["backbone"]["learn_sigma"] is True
    assert record.options["sampler"]["steps"] == 250 and doc["extra"]["imported"]["checkpoint"] == "DiT-tiny.pt"
    loaded = systems.load(tmp_path / "sys").content.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    # and the loaded weights written back in the official layout import to the same system again
    torch.save(loaded, tmp_path / "again.pt")
    import_dit(tmp_path / "again.pt", tmp_path / "sys2", num_heads=HEADS)
    for key, value in systems.load(tmp_path / "sys2").content.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_geometry_is_read_from_shapes_for_every_dit_size():
    for hidden, (size, heads) in {384: ("s", 6), 768: ("b", 12), 1024: ("l", 16), 1152: ("xl", 16)}.items():
        for grid, patch in ((16, 2), (32, 2), (32, 4)):
            state = {
                "x_embedder.proj.weight": torch.empty(hidden, 4, patch, patch),
                "pos_embed": torch.empty(1, grid * grid, hidden),
                "y_embedder.embedding_table.weight": torch.empty(1001, hidden),
                "final_layer.linear.weight": torch.empty(patch * patch * 8, hidden),
                "blocks.0.mlp.fc1.weight": torch.empty(4 * hidden, hidden),
                "blocks.1.mlp.fc1.weight": torch.empty(4 * hidden, hidden),
            }
            geo = dit_geometry(state)
            assert geo["backbone"] == f"dit-{size}" and geo["input_size"] == grid * patch
            assert geo["backbone_options"]["num_heads"] == heads and geo["backbone_options"]["depth"] == 2
            assert geo["num_classes"] == 1000 and geo["backbone_options"]["learn_sigma"]


def test_bad_dit_checkpoints_are_user_errors(tmp_path):
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="x_embedder.proj.weight"):
        import_dit(tmp_path / "other.pt", tmp_path / "out")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="weights_only"):
        import_dit(tmp_path / "junk.pt", tmp_path / "out")
    state = official_dit_state()
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(D2itError, match="--num-heads"):
        import_dit(tmp_path / "odd.pt", tmp_path / "out")  # width 32 is none of DiT's sizes


# -- VAE -----------------------------------------------------------------------------------------------
def test_imported_sd_vae_equals_diffusers_autoencoder(tmp_path):
    folder, reference = tiny_sd_vae_folder(tmp_path)
    record = systems.SystemRecord(backbone="dit-s", image_size=64, options={"backbone": {"depth": 1}})
    system = import_sd_vae(folder, tmp_path / "sys", record=record)
    assert system.record.latent_scale == pytest.approx(0.18215) and system.record.vae == "vae-f8"
    vae = systems.load(tmp_path / "sys", parts=["vae"]).vae.eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(vae.encode(x)[0][:, :4], reference.encode(x).latent_dist.mean, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(vae.decode(z), reference.decode(z).sample, rtol=1e-4, atol=1e-4)
    # the same weights as an LDM checkpoint (what CompVis and Stability publish), inside a full SD state dict
    ldm = {f"first_stage_model.{k}": v for k, v in _to_ldm_names(reference.state_dict()).items()}
    sd = {"state_dict": {**ldm, "model.diffusion_model.x": torch.zeros(1)}, "global_step": 3}
    torch.save(sd, tmp_path / "sd.ckpt")
    state = read_sd_vae(tmp_path / "sd.ckpt")
    assert state["latent_scale"] == pytest.approx(0.18215)
    ldm_vae = import_sd_vae(tmp_path / "sd.ckpt", tmp_path / "sys2", record=record).vae.eval()
    with torch.no_grad():
        torch.testing.assert_close(ldm_vae.decode(z), reference.decode(z).sample, rtol=1e-4, atol=1e-4)


def _to_ldm_names(state: dict) -> dict:
    """diffusers AutoencoderKL names -> LDM's (ldm/modules/diffusionmodules/model.py), written out by hand."""
    out = {}
    levels = 4
    for key, value in state.items():
        k = key
        for i in range(levels):
            k = k.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            k = k.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            k = k.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block.")
            k = k.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.")
        k = k.replace("mid_block.resnets.0.", "mid.block_1.").replace("mid_block.resnets.1.", "mid.block_2.")
        for a, b in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            k = k.replace(f"mid_block.attentions.0.{a}.", f"mid.attn_1.{b}.")
        k = k.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        if ".mid.attn_1." in k and value.ndim == 2:
            value = value[:, :, None, None]
        out[k] = value
    return out


def test_old_vae_f8_systems_still_load(tmp_path):
    """A vae-f8 directory written before the quant convs existed loads, the convs as identity."""
    record = systems.SystemRecord(
        backbone="dit-s", vae="vae-f8", image_size=16,
        options={"backbone": {"depth": 1, "hidden_size": 32, "num_heads": 2},
                 "vae": {"base_width": 32, "channel_mult": [1, 2], "decoder_mult": [1, 2], "num_res_blocks": 1}},
    )  # fmt: skip
    system = systems.build(record)
    systems.save(system, tmp_path / "old")
    path = tmp_path / "old" / "vae.safetensors"
    tensors, meta = d2it.io.load_safetensors(path)
    d2it.io.save_safetensors({k: v for k, v in tensors.items() if "quant_conv" not in k}, path, meta)
    loaded = systems.load(tmp_path / "old")
    torch.testing.assert_close(loaded.vae.post_quant_conv.weight[:, :, 0, 0], torch.eye(4))


# -- sampling --------------------------------------------------------------------------------------------
def _our_run(system, labels, x_T, steps, cfg_scale, channels):
    """What `generate` does, with the starting noise given: guided model, 10 respaced DDPM steps, decode."""
    sampler = d2it.create("sampler", "ddpm", {"steps": steps})
    model_fn = conditioned_model(system.content, labels, cfg_scale=cfg_scale, channels=channels)
    z = sampler.sample(model_fn, make_diffusion(system), tuple(x_T.shape), noise=x_T, progress=False)
    return system.vae.decode(z / system.latent_scale)


def _pipeline(tmp_path, learn_sigma, variance_type):
    ckpt = write_official_checkpoint(tmp_path, learn_sigma=learn_sigma)
    folder, reference_vae = tiny_sd_vae_folder(tmp_path)
    system = import_dit(ckpt, tmp_path / "sys", vae=folder, num_heads=HEADS).eval()
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
        variance_type=variance_type, clip_sample=False, timestep_spacing="linspace",  # DiT's respacing, no clipping
    )  # fmt: skip
    transformer = diffusers_dit(torch.load(ckpt, weights_only=True), learn_sigma=learn_sigma)
    return system, diffusers.DiTPipeline(transformer=transformer, vae=reference_vae, scheduler=scheduler)


def test_ten_steps_equal_dit_pipeline_with_ddpm_scheduler(tmp_path, monkeypatch):
    """DiTPipeline (guidance on all channels, null class 1000) vs an imported system, same noise and labels.

    The pipeline drops a learned variance before `DDPMScheduler.step`, so this DiT has fixed variance
    (`fixed_large`, DiT's for learn_sigma=False); the learned-range path is compared in the next test.
    """
    system, pipe = _pipeline(tmp_path, learn_sigma=False, variance_type="fixed_large")
    labels, steps, scale = [3, 999], 10, 4.0
    drawn = []  # the pipeline's per-step noise (for the doubled batch), replayed into our sampler
    original = ddpm_module.randn_tensor

    def recording(*args, **kwargs):
        drawn.append(original(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(ddpm_module, "randn_tensor", recording)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        images = pipe(labels, guidance_scale=scale, generator=g, num_inference_steps=steps, output_type="np").images
    x_T = torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(7))
    assert len(drawn) == steps - 1
    replay = iter([d[: len(labels)] for d in drawn])  # the conditional half is the one the pipeline keeps
    monkeypatch.setattr(diffusion_module, "gaussian_noise", lambda shape, **kwargs: next(replay))
    with torch.no_grad():
        ours = _our_run(system, torch.tensor(labels), x_T, steps, scale, "all")
    ours = ((ours / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).numpy()
    assert abs(ours - images).max() < 1e-4
    assert next(replay, None) is None


def test_learned_variance_steps_equal_ddpm_scheduler(tmp_path):
    """The imported learn-sigma DiT through DDPMScheduler(variance_type="learned_range") vs our DDPM, global RNG."""
    system, pipe = _pipeline(tmp_path, learn_sigma=True, variance_type="learned_range")
    scheduler, transformer = pipe.scheduler, pipe.transformer
    labels, steps = torch.tensor([5, 17]), 10
    x_T = torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(9))
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    torch.manual_seed(11)
    x = x_T
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = transformer(x, timestep=t.expand(2), class_labels=labels).sample
            x = scheduler.step(out, t, x).prev_sample
    torch.manual_seed(11)
    sampler = d2it.create("sampler", "ddpm", {"steps": steps})
    with torch.no_grad():
        z = sampler.sample(lambda xx, tt: system.content(xx, tt, labels), make_diffusion(system), (2, 4, 8, 8),
                           noise=x_T, progress=False)  # fmt: skip
    torch.testing.assert_close(z, x, rtol=1e-4, atol=1e-4)


def test_gpu_parity_script_dry_run(tmp_path):
    """benchmarks/gpu_parity.py on tiny sizes (CPU): the check a GPU run makes at DiT-XL/2 size."""
    script = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu_parity.py"
    if not script.exists():
        pytest.skip("benchmarks/ is not next to this package (installed elsewhere)")
    env = {**os.environ, "OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(script), "--dry-run", "--batch", "2", "--steps", "3"],
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "gpu_parity.json").read_text())
    assert doc["gpu_parity"]["float32"]["images_max"] < 1e-4 and doc["gpu_parity"]["float32"]["ok"]
    assert doc["gpu_parity"]["bfloat16"]["ok"] and doc["gpu_parity"]["bfloat16"]["images_max"] > 0
