"""`d2it export --format diffusers`: both forms load in diffusers and sample (random weights, nothing downloaded).

A `dit-*` + `vae-f8` system becomes a `DiTPipeline`: with diffusers' timestep frequencies set to DiT's
after loading, it samples what d2it samples (null class, learned sigma, latent scale) to float rounding;
as shipped, the frequencies differ and the difference is measured. A D²iT system becomes a d2it custom
pipeline (`trust_remote_code=True`) whose images are `d2it sample`'s, pixel for pixel.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_export import grain_run  # noqa: F401 - the fixture: the tiny grain transformer trained 2 steps

import d2it
from d2it import system as systems
from d2it.io import load_safetensors
from d2it_cli.interop import read_sd_vae
from d2it_cli.interop.to_diffusers import scheduler_for
from d2it_sampling import Pipeline
from d2it_sampling.pipeline import CONTENT_STREAM, generate, sample_seed

diffusers = pytest.importorskip("diffusers")
dynamic_modules = pytest.importorskip("diffusers.utils.dynamic_modules_utils")

LABELS, SEED, STEPS = [0, 3, 1], 5, 10


def _randomise(module, seed, std=0.05):
    """Random weights everywhere (DiT zero-initialises its modulation and output layers), norm scales near 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std + float("norm" in name and name.endswith("weight")))
    return module


def dit_system(folder, *, channels="all", spacing="trailing", sampler="ddim", class_dropout=0.1):
    """A tiny dit-s + vae-f8 system (16 px, 8x8x4 latents, 4 classes, latent scale 0.5, learned sigma), random."""
    record = systems.SystemRecord(
        backbone="dit-s", vae="vae-f8", image_size=16, num_classes=4, sampler=sampler, latent_scale=0.5,
        options={"backbone": {"depth": 2, "hidden_size": 32, "num_heads": 2, "class_dropout": class_dropout},
                 "vae": {"base_width": 32, "channel_mult": [1, 2], "decoder_mult": [1, 2], "num_res_blocks": 1},
                 "sampler": {"steps": STEPS, "spacing": spacing}, "guidance": {"channels": channels}},
    )  # fmt: skip
    torch.manual_seed(0)
    system = systems.build(record)
    _randomise(system.content, 1)
    _randomise(system.vae, 2)
    systems.save(system, folder)
    return systems.load(folder).eval()


@pytest.fixture
def modules_cache(tmp_path, monkeypatch):
    """diffusers copies a folder's pipeline code into its modules cache: a temporary one here."""
    cache = tmp_path / "hf-modules"
    monkeypatch.setattr(dynamic_modules, "HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    return cache


def export(run_cli, *args):
    result = run_cli("export", "--format", "diffusers", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def sample_both(system, pipe, cfg, *, dit_frequencies):
    """(d2it, diffusers) images of LABELS in [0, 1] NHWC, on the same noise: d2it's per-sample streams of SEED."""
    for block in pipe.transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0 if dit_frequencies else 1
    generators = [torch.Generator().manual_seed(sample_seed(SEED, i, CONTENT_STREAM)) for i in range(len(LABELS))]
    theirs = pipe(LABELS, guidance_scale=cfg, generator=generators, num_inference_steps=STEPS, output_type="np").images
    ours = generate(system, LABELS, seed=SEED, cfg_scale=cfg, progress=False).images
    return ((ours + 1) / 2).permute(0, 2, 3, 1).numpy(), theirs


# -- DiTPipeline ----------------------------------------------------------------------------------------
def test_dit_system_exports_as_a_dit_pipeline_that_samples_what_d2it_samples(tmp_path, run_cli, capsys):
    system = dit_system(tmp_path / "sys")
    summary = export(run_cli, "--system", tmp_path / "sys", "--out", tmp_path / "out")
    assert summary["pipeline"] == "DiTPipeline" and "why_not_dit" not in summary
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert index["_class_name"] == "DiTPipeline" and index["scheduler"] == ["diffusers", "DDIMScheduler"]
    pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "out")
    assert isinstance(pipe, diffusers.DiTPipeline) and pipe.scheduler.config.timestep_spacing == "trailing"
    assert pipe.vae.config.scaling_factor == 0.5 and pipe.transformer.config.out_channels == 8  # learned sigma
    pipe.set_progress_bar_config(disable=True)
    # exact where diffusers' code allows: guided (null class 1000) and unguided, DiT's frequencies set after loading
    for cfg in (1.0, 4.0):
        ours, theirs = sample_both(system, pipe, cfg, dit_frequencies=True)
        assert np.abs(ours - theirs).max() < 1e-5, cfg
    # as shipped, diffusers' own timestep frequencies: close, not equal (README: "Export to diffusers")
    ours, theirs = sample_both(system, pipe, 4.0, dit_frequencies=False)
    gap = np.abs(ours - theirs)
    levels = np.abs(np.floor(ours * 255 + 0.5) - np.floor(theirs * 255 + 0.5))
    with capsys.disabled():
        print(f"\nDiTPipeline as shipped: max {gap.max():.4f}, mean {gap.mean():.5f}, {levels.max():.0f} levels")
    assert 1e-4 < gap.max() < 0.05 and gap.mean() < 0.005
    # the VAE is the system's, exactly: importing it back gives the same tensors
    state = read_sd_vae(tmp_path / "out" / "vae")
    assert state["latent_scale"] == 0.5
    for key, value in system.vae.state_dict().items():
        assert torch.equal(state["tensors"][key], value), key
    notes = json.loads((tmp_path / "out" / "d2it_export.json").read_text())["agreement"]
    assert any("downscale_freq_shift" in note for note in notes)


def test_dit_guidance_channels_and_class_tables(tmp_path, run_cli):
    """A `dit`-channels system guides 3 channels where DiTPipeline guides 4; the null row lands at 1000."""
    system = dit_system(tmp_path / "sys", channels="dit")
    export(run_cli, "--system", tmp_path / "sys", "--out", tmp_path / "out")
    pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "out")
    pipe.set_progress_bar_config(disable=True)
    ours, theirs = sample_both(system, pipe, 1.0, dit_frequencies=True)
    assert np.abs(ours - theirs).max() < 1e-5  # unguided, the channels do not matter
    ours, theirs = sample_both(system, pipe, 4.0, dit_frequencies=True)
    assert np.abs(ours - theirs).max() > 1e-4  # guided: diffusers' fourth channel differs, as the export says
    assert any("first three" in n for n in json.loads((tmp_path / "out" / "d2it_export.json").read_text())["agreement"])
    table = pipe.transformer.transformer_blocks[1].norm1.emb.class_embedder.embedding_table.weight
    ours_table = system.content.y_embedder.embedding_table.weight
    assert table.shape[0] == 1001 and torch.equal(table[:4], ours_table[:4])
    assert torch.equal(table[1000], ours_table[4]) and torch.equal(table[500], ours_table[4])


def test_scheduler_choice_follows_the_sampler(tmp_path, run_cli):
    dit_system(tmp_path / "sys", spacing="uniform", sampler="ddpm")
    summary = export(run_cli, "--system", tmp_path / "sys", "--out", tmp_path / "ddpm")
    scheduler = json.loads((tmp_path / "ddpm" / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["_class_name"], scheduler["variance_type"], scheduler["timestep_spacing"]) == (
        "DDPMScheduler", "fixed_small", "linspace"
    )  # fmt: skip
    assert any("learned variance" in note for note in summary["agreement"])
    summary = export(run_cli, "--system", tmp_path / "sys", "--out", tmp_path / "dpm", "--sampler", "dpmpp-2m")
    scheduler = json.loads((tmp_path / "dpm" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DPMSolverMultistepScheduler" and scheduler["use_lu_lambdas"] is True
    pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "dpm")
    pipe.set_progress_bar_config(disable=True)
    images = pipe([0, 1], num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images
    assert [im.size for im in images] == [(16, 16)] * 2
    record = systems.read_record(tmp_path / "sys")[0]
    with pytest.raises(d2it.ConfigError, match="no diffusers scheduler"):
        scheduler_for(record, "no-such", {"spacing": "uniform"}, learn_sigma=True)
    bad = run_cli("export", "--format", "diffusers", "--system", tmp_path / "sys", "--out", tmp_path / "ddpm")
    assert bad.exit_code == 2 and "--overwrite" in bad.output


# -- D²iT: the d2it custom pipeline ---------------------------------------------------------------------------
def test_d2it_system_exports_as_a_custom_pipeline_equal_to_d2it_sample(tiny_system, tmp_path, run_cli, modules_cache):
    summary = export(run_cli, "--system", tiny_system, "--out", tmp_path / "out")
    assert summary["pipeline"] == "D2itPipeline" and any("D²iT" in why for why in summary["why_not_dit"])
    assert (tmp_path / "out" / "pipeline_d2it.py").is_file() and (tmp_path / "out" / "system" / "d2it.json").is_file()
    with pytest.raises(ValueError, match="trust_remote_code"):
        diffusers.DiffusionPipeline.from_pretrained(tmp_path / "out")  # nothing runs without consent
    pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "out", trust_remote_code=True).to("cpu")
    assert type(pipe).__name__ == "D2itPipeline" and isinstance(pipe.system, d2it.System)
    out = pipe(class_labels=[0, 1, 2, 3], num_inference_steps=2, guidance_scale=1.5,
               generator=torch.Generator().manual_seed(7))  # fmt: skip
    result = run_cli("sample", "--system", tiny_system, "--num", 4, "--class", "0,1,2,3", "--steps", 2,
                     "--cfg-scale", 1.5, "--seed", 7, "--out", tmp_path / "s", "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "s" / "samples").glob("*.png"))
    assert len(out.images) == 4 and all(isinstance(im, Image.Image) for im in out.images)
    for image, png in zip(out.images, pngs):
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(png)))
    # one generator per image: image i is the first sample of its generator's seed
    gens = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(9)]
    two = pipe(class_labels=[1, 2], num_inference_steps=2, generator=gens, output_type="np").images
    library = Pipeline(pipe.system)
    for image, (label, seed) in zip(two, [(1, 7), (2, 9)]):
        want = library([label], steps=2, seed=seed, output_type="np")[0]
        assert np.array_equal(image, want)
    assert pipe([3], num_inference_steps=2, seed=7, output_type="pt").images.shape == (1, 3, 32, 32)
    assert d2it.System.from_pretrained(tmp_path / "out").record == pipe.system.record  # the export's system/ folder


def test_export_a_run_checkpoint_to_diffusers(grain_run, tmp_path, run_cli):  # noqa: F811
    system, run = grain_run
    summary = export(run_cli, "--run", run, "--step", "1", "--out", tmp_path / "out")
    assert summary["pipeline"] == "D2itPipeline" and "step 1 (grain: ema)" in summary["source"]
    assert run_cli("export", "--run", run, "--step", "1", "--out", tmp_path / "d2it").exit_code == 0
    for part in ("grain", "content", "vae"):  # the same weights as `d2it export` of the step (its EMA grain)
        a, _ = load_safetensors(tmp_path / "out" / "system" / f"{part}.safetensors")
        b, _ = load_safetensors(tmp_path / "d2it" / f"{part}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    doc = json.loads((tmp_path / "out" / "d2it_export.json").read_text())
    assert doc["extra"]["exported_from"]["step"] == 1
    bad = run_cli("export", "--format", "diffusers", "--run", run, "--every", "--out", tmp_path / "x")
    assert bad.exit_code == 2 and "--every" in bad.output
    bad = run_cli("export", "--format", "diffusers", "--pipeline", "dit", "--system", system, "--out", tmp_path / "y")
    assert bad.exit_code == 2 and "cannot be a DiTPipeline" in bad.output
    bad = run_cli("export", "--out", tmp_path / "z")
    assert bad.exit_code == 2 and "--run is required" in bad.output
