"""DiT family: conformance of every registered backbone, building blocks, sizes and counting targets."""

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from d2it.counting import count, count_params
from d2it.errors import ConfigError, D2itError
from d2it.io import load_into
from d2it.registry import default_registry
from d2it.testing.backbone import BackboneConformance
from d2it_transformers.dit import (
    DiT,
    DiTBlock,
    FinalLayer,
    LabelEmbedder,
    RoutedDiT,
    TimestepEmbedder,
    get_2d_sincos_pos_embed,
)
from d2it_transformers.plugin import BACKBONES

NAMES = ["dit-s", "dit-b", "dit-l", "dit-xl", "dit-s/1", "dit-b/1", "dit-l/1", "dit-xl/1"]
TINY = {"depth": 2, "hidden_size": 32, "num_heads": 2}


# one conformance class per registered name, as timm parametrises over its registry
for _name in NAMES:
    _cls = type(f"TestConformance_{_name.replace('-', '_').replace('/', '_')}", (BackboneConformance,), {})
    _cls.name, _cls.overrides = _name, dict(TINY)
    globals()[_cls.__name__] = _cls
del _name, _cls


def sdpa():
    return default_registry().create("attention", "sdpa")


def make(name, grains=None, input_size=32, device=None, **overrides):
    ctx = torch.device(device) if device else torch.device("cpu")
    with ctx:
        return default_registry().create(
            "backbone",
            name,
            overrides,
            input_size=input_size,
            in_channels=4,
            num_classes=1000,
            grains=grains,
            attention=sdpa(),
        )


def test_every_backbone_is_registered():
    assert sorted(NAMES) == default_registry().names("backbone")
    assert sorted(s.name for s in BACKBONES) == sorted(NAMES)
    assert default_registry().get("backbone", "dit-xl/2").name == "dit-xl"


@pytest.mark.parametrize("name", NAMES)
def test_config_defaults(name):
    size, _, patch = name.removeprefix("dit-").partition("/")
    config = default_registry().get("backbone", name).make_config()
    hidden, heads, refine = {"s": (384, 6, 2), "b": (768, 12, 2), "l": (1024, 16, 4), "xl": (1152, 16, 6)}[size]
    assert (config.hidden_size, config.num_heads, config.refine_depth) == (hidden, heads, refine)
    assert config.patch_size == int(patch or 2)
    assert config.depth is None and config.mlp_ratio == 4.0 and config.class_dropout == 0.1 and config.learn_sigma


@pytest.mark.parametrize("name", NAMES)
def test_summary_matches_the_config_defaults(name):
    # the summaries are written out in the plugin (listing imports no model code), so check them here
    spec = default_registry().get("backbone", name)
    c = spec.make_config()
    title = f"DiT-{name.removeprefix('dit-').split('/')[0].upper()}/{c.patch_size}"
    assert spec.summary == (
        f"{title}: width {c.hidden_size}, {c.num_heads} heads, depth {c.blocks} "
        f"(D²iT: {c.blocks - c.refine_depth} + {c.refine_depth} RefineNet)"
    )


@pytest.mark.parametrize(
    ("name", "plain", "routed"), [("dit-s", 12, 10), ("dit-b", 12, 10), ("dit-l", 24, 20), ("dit-xl", 28, 22)]
)
def test_depths(name, plain, routed):
    assert len(make(name, device="meta").blocks) == plain
    backbone = make(name, grains=2, device="meta")
    assert isinstance(backbone, RoutedDiT) and len(backbone.blocks) == routed
    assert len(make(name, grains=2, device="meta", depth=7).blocks) == 7


def test_routed_backbone_needs_region_sized_patches():
    with pytest.raises(ConfigError, match="patch_size 2"):
        make("dit-b/1", grains=2, device="meta")
    assert make("dit-s", grains=3, input_size=8, device="meta", patch_size=4, **TINY).region == 4


@pytest.mark.parametrize(
    ("overrides", "match"),
    [({"num_heads": 5}, "not divisible"), ({"depth": -1}, "depth"), ({"class_dropout": 1.5}, "class_dropout")],
)
def test_bad_options_raise_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        make("dit-s", input_size=8, device="meta", **{**TINY, **overrides})


def test_latent_size_must_divide_into_patches():
    with pytest.raises(ConfigError, match="not divisible by the patch size 2"):
        make("dit-s", input_size=7, device="meta", **TINY)


def test_timestep_embedding_matches_glide():
    t = torch.tensor([0, 1, 500])
    emb = TimestepEmbedder.timestep_embedding(t, 8)
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    expected = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=-1)
    torch.testing.assert_close(emb, expected)
    assert TimestepEmbedder(16)(t).shape == (3, 16)


def test_label_embedder_null_class_and_dropout():
    emb = LabelEmbedder(10, 8, dropout_prob=0.5)
    assert emb.embedding_table.num_embeddings == 11
    labels = torch.arange(10).repeat(100)
    torch.testing.assert_close(emb(labels, train=False), emb.embedding_table(labels))
    forced = emb(torch.tensor([3, 4]), train=False, force_drop_ids=torch.tensor([1, 0]))
    torch.testing.assert_close(forced, emb.embedding_table(torch.tensor([10, 4])))
    torch.manual_seed(0)
    dropped = (emb.token_drop(labels) == 10).float().mean()
    assert 0.4 < dropped < 0.6
    assert torch.equal(LabelEmbedder(10, 8, 0.0).token_drop(labels, None), labels)


def test_label_table_has_no_null_row_without_dropout_as_dit():
    # DiT's LabelEmbedder: use_cfg_embedding = dropout_prob > 0; Embedding(num_classes + use_cfg_embedding, D)
    for dropout, rows in ((0.0, 10), (0.1, 11)):
        emb = LabelEmbedder(10, 8, dropout_prob=dropout)
        assert emb.embedding_table.num_embeddings == rows
        assert emb.null_class == (10 if dropout else None)
    emb = LabelEmbedder(10, 8, 0.0)
    with pytest.raises(D2itError, match="null class"):
        emb(torch.tensor([1]), train=False, force_drop_ids=torch.tensor([1]))
    # weights written with the old unconditional null row still load (the untrained row is dropped)
    old = {"embedding_table.weight": torch.randn(11, 8)}
    load_into(emb, old, where="old.safetensors")
    torch.testing.assert_close(emb.embedding_table.weight, old["embedding_table.weight"][:10])


def test_sincos_table_matches_dit():
    table = get_2d_sincos_pos_embed(8, 3)
    assert table.shape == (9, 8)
    # row r*3 + c: first half encodes the row (DiT's grid[0] is the w coordinate), second half the column
    pos = np.arange(3, dtype=np.float64)
    omega = 1.0 / 10000 ** (np.arange(2) / 2.0)
    np.testing.assert_allclose(table[:3, :2], np.sin(np.outer(pos, omega)))
    np.testing.assert_allclose(table[::3, 4:6], np.sin(np.outer(pos, omega)))
    np.testing.assert_allclose(get_2d_sincos_pos_embed(8, (2, 3)), table[:6])


def test_dit_initialisation():
    torch.manual_seed(0)
    model = make("dit-b", input_size=8, depth=2, hidden_size=64, num_heads=4)
    for block in model.blocks:
        assert isinstance(block, DiTBlock)
        assert not block.adaLN_modulation[-1].weight.any() and not block.adaLN_modulation[-1].bias.any()
        assert not block.norm1.elementwise_affine and block.norm1.eps == 1e-6
        assert block.mlp.act.approximate == "tanh" and block.mlp.fc1.out_features == 256
        assert not block.attn.qkv.bias.any()
    assert isinstance(model.final_layer, FinalLayer) and not model.final_layer.linear.weight.any()
    assert abs(model.y_embedder.embedding_table.weight.std().item() - 0.02) < 0.005
    assert abs(model.t_embedder.mlp[0].weight.std().item() - 0.02) < 0.005
    bound = math.sqrt(6 / (64 + 3 * 64))
    assert model.blocks[0].attn.qkv.weight.abs().max() <= bound
    assert not model.pos_embed.requires_grad and "pos_embed" not in dict(model.named_parameters())


def test_plain_dit_contract():
    model = make("dit-s", input_size=8, **TINY)
    assert isinstance(model, DiT)
    assert (model.in_channels, model.out_channels, model.learn_sigma, model.input_size) == (4, 8, True, 8)
    assert model.num_classes == 1000 and model.grains is None
    x, t, y = model.example_inputs(3)
    assert x.shape == (3, 4, 8, 8) and model(x, t, y, None).shape == (3, 8, 8, 8)
    assert make("dit-s", input_size=8, learn_sigma=False, **TINY).out_channels == 4


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = make("dit-s", input_size=8, **TINY)
    b = make("dit-s", input_size=8, **TINY)
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing()
    x, t, y = a.example_inputs(2)
    grads = []
    for m in (a, b):
        m.eval()
        with torch.no_grad():  # non-zero weights everywhere, so every gradient is non-trivial
            for p in m.parameters():
                p.copy_(torch.linspace(-0.1, 0.1, p.numel()).view_as(p))
        m.zero_grad()
        m(x, t, y).square().mean().backward()
        grads.append([p.grad for p in m.parameters()])
    for ga, gb in zip(*grads):
        torch.testing.assert_close(ga, gb)


# --- counting targets (paper Tables 1-2; built on the meta device so nothing is allocated) ---------


@pytest.mark.parametrize(
    ("name", "params_m", "gmacs", "attention"),
    [
        ("dit-b", 130.3, 23.01, True),
        ("dit-l", 457.8, 80.70, True),
        ("dit-xl", 674.8, 118.62, True),
        ("dit-xl/1", None, 456.85, False),
    ],
)
def test_counting_targets(name, params_m, gmacs, attention):
    model = make(name, device="meta")
    counts = count(model, *model.example_inputs(1))
    if params_m is not None:
        assert counts.params / 1e6 == pytest.approx(params_m, rel=5e-3)
    macs = counts.macs if attention else counts.macs_without_attention
    assert macs / 1e9 == pytest.approx(gmacs, rel=5e-3)


def test_meta_and_cpu_counts_agree_for_dit_b():
    torch.manual_seed(0)
    model = make("dit-b")
    assert count_params(model) == 130_315_808
    assert round(count(model, *model.example_inputs(1)).macs / 1e9, 2) == 23.01


def test_cli_unknown_backbone_lists_valid_ones():
    from d2it_cli.main import load_registry, make_cli

    result = CliRunner().invoke(make_cli(load_registry()), ["build", "--backbone", "dit-xxl", "--no-count"])
    assert result.exit_code == 2
    assert "dit-xxl" in result.output and "dit-b, dit-b/1" in result.output and "dit-xl/1" in result.output
