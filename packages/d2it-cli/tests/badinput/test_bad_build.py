"""Bad inputs of `d2it build` and `d2it plugins`: exit 2, one `error:` line, no traceback."""

import pytest

from conftest import probe

TINY = (
    "--backbone dit-s --image-size 32 --no-count --set backbone.depth=1 --set backbone.hidden_size=32 "
    "--set backbone.num_heads=2"
)
D2IT = "--vae dvae-kl --refine window16 --set vae.base_width=8 --set vae.norm_groups=4 --set vae.attn_levels=0"

PROBES = [
    probe("image-size-0", f"build {TINY} --image-size 0", "--image-size"),
    probe("image-size-neg", f"build {TINY} --image-size -32", "--image-size"),
    probe("image-size-text", f"build {TINY} --image-size big", "--image-size"),
    probe("image-size-float", f"build {TINY} --image-size 32.5", "--image-size"),
    probe("image-size-indivisible", f"build {TINY} {D2IT} --image-size 40", "not divisible"),
    probe("num-classes-0", f"build {TINY} --num-classes 0", "--num-classes"),
    probe("num-classes-neg", f"build {TINY} --num-classes -3", "--num-classes"),
    probe("system-num-classes-neg", f"build {TINY} --set system.num_classes=-3", "num_classes"),
    probe("system-image-size-0", f"build {TINY} --set system.image_size=0", "image_size"),
    probe("system-image-size-text", f"build {TINY} --set system.image_size=x", "system.image_size"),
    probe("system-unknown", f"build {TINY} --set system.colour=red", "colour"),
    probe("unknown-backbone", "build --backbone dit-xxl", "valid backbones"),
    probe("unknown-vae", f"build {TINY} --vae dvae-zz", "dvae-kl"),
    probe("unknown-refiner", f"build {TINY} --refine window3", "window16"),
    probe("unknown-grain", f"build {TINY} --refine window16 --grain dgt-q", "dgt-s"),
    probe("unknown-sampler", f"build {TINY} --sampler euler-zz", "ddpm"),
    probe("unknown-schedule", f"build {TINY} --schedule quadratic", "linear"),
    probe("unknown-attention", f"build {TINY} --attention flashy", "sdpa"),
    probe("set-no-equals", f"build {TINY} --set nonsense", "slot.option=value"),
    probe("set-no-dot", f"build {TINY} --set depth=2", "slot.option=value"),
    probe("set-unknown-option", f"build {TINY} --set backbone.colour=red", "colour"),
    probe("set-unused-slot", f"build {TINY} --set vae.base_width=8", "vae"),
    probe("set-wrong-type", f"build {TINY} --set backbone.depth=deep", "backbone.depth"),
    probe("depth-0", f"build {TINY} --set backbone.depth=0", "backbone.depth"),
    probe("depth-neg", f"build {TINY} --set backbone.depth=-2", "backbone.depth"),
    probe("heads-0", f"build {TINY} --set backbone.num_heads=0", "num_heads"),
    probe("mlp-ratio-nan", f"build {TINY} --set backbone.mlp_ratio=nan", "mlp_ratio"),
    probe("mlp-ratio-inf", f"build {TINY} --set backbone.mlp_ratio=inf", "mlp_ratio"),
    probe("mlp-ratio-0", f"build {TINY} --set backbone.mlp_ratio=0", "mlp_ratio"),
    probe("class-dropout-2", f"build {TINY} --set backbone.class_dropout=2", "class_dropout"),
    probe("timesteps-0", f"build {TINY} --set schedule.num_timesteps=0", "num_timesteps"),
    probe("timesteps-neg", f"build {TINY} --set schedule.num_timesteps=-5", "num_timesteps"),
    probe("beta-nan", f"build {TINY} --set schedule.beta_end=nan", "beta_end"),
    probe("beta-start-inf", f"build {TINY} --set schedule.beta_start=inf", "beta_start"),
    probe("beta-order", f"build {TINY} --set schedule.beta_start=0.5 --set schedule.beta_end=0.1", "beta"),
    probe("beta-above-1", f"build {TINY} --set schedule.beta_end=1.5", "beta_end"),
    probe("cosine-max-beta", f"build {TINY} --schedule cosine --set schedule.max_beta=nan", "max_beta"),
    probe("sampler-steps-neg", f"build {TINY} --set sampler.steps=-1", "sampler.steps"),
    probe("sampler-steps-0", f"build {TINY} --set sampler.steps=0", "sampler.steps"),
    probe("ddim-eta-neg", f"build {TINY} --sampler ddim --set sampler.eta=-1", "eta"),
    probe("latent-channels-0", f"build {TINY} {D2IT} --set vae.latent_channels=0", "latent_channels"),
    probe("vae-width-0", f"build {TINY} {D2IT} --set vae.base_width=0", "base_width"),
    probe("vae-dropout-nan", f"build {TINY} {D2IT} --set vae.dropout=nan", "dropout"),
    probe("vae-channel-mult-0", f"build {TINY} {D2IT} --set vae.channel_mult=1,0,2,2,4", "channel_mult"),
    probe("vae-grains-0", f"build {TINY} {D2IT} --set vae.grains=0", "grains"),
    probe("vae-unknown-regularizer", f"build {TINY} {D2IT} --set vae.regularizer=zz", "regularizer"),
    probe("grain-depth-0", f"build {TINY} {D2IT} --set grain.depth=0", "depth"),
    probe("out-is-a-file", f"build {TINY} --out {{file}}", "afile"),
    probe("out-under-a-file", f"build {TINY} --out {{file}}/sys", "afile"),
    probe("out-foreign", f"build {TINY} --out {{userdir}} --overwrite", "holds no d2it system"),
    probe("from-missing", "build --from {missing}", "does not exist"),
    probe("from-not-a-system", "build --from {nosys}", "d2it.json"),
    probe("from-bad-json", "build --from {sys_badjson}", "d2it.json"),
    probe("from-json-list", "build --from {sys_jsonlist}", "d2it.json"),
    probe("from-empty-json", "build --from {sys_emptyjson}", "d2it.json"),
    probe("from-binary-json", "build --from {sys_binaryjson}", "d2it.json"),
    probe("from-wrong-type", "build --from {sys_strsize} --no-count", "image_size"),
    probe("from-float-size", "build --from {sys_floatsize} --no-count", "image_size"),
    probe("from-bool-classes", "build --from {sys_boolclasses} --no-count", "num_classes"),
    probe("from-bad-options", "build --from {sys_badoptions} --no-count", "options"),
    probe("from-option-string", "build --from {sys_optionstr} --no-count", "options"),
    probe("from-nan-thresholds", "build --from {sys_nanthresh} --no-count", "thresholds"),
    probe("from-string-thresholds", "build --from {sys_strthresh} --no-count", "thresholds"),
    probe("from-descending-thresholds", "build --from {sys_descthresh} --no-count", "ascending"),
    probe("from-int-vae", "build --from {sys_vaeint} --no-count", "vae"),
    probe("from-unknown-field", "build --from {sys_unknownfield} --no-count", "colour"),
    probe("from-format", "build --from {sys_format} --no-count", "format"),
    probe("from-no-system", "build --from {sys_nosystem} --no-count", "system"),
    probe("from-system-list", "build --from {sys_systemlist} --no-count", "system"),
    probe("from-nan-scale", "build --from {sys_nanscale} --no-count", "latent_scale"),
    probe("from-zero-scale", "build --from {sys_zeroscale} --no-count", "latent_scale"),
    probe("from-no-weights", "build --from {sys_noweights} --no-count", "does not exist"),
    probe("from-truncated-weights", "build --from {sys_truncweights} --no-count", "safetensors"),
    probe("unknown-option", "build --colour red", "--colour"),
    probe("extra-argument", f"build {TINY} extra", "extra"),
    probe("plugins-unknown-kind", "plugins --kind gizmo", "--kind"),
    probe("plugins-extra-argument", "plugins now", "now"),
    probe("unknown-command", "bulid", "bulid"),
    probe("top-level-unknown-option", "--colour build", "--colour"),
]


@pytest.mark.parametrize("command,expect", PROBES)
def test_build_rejects(run_probe, command, expect):
    run_probe(command, expect)
