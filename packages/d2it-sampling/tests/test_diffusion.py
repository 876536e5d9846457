"""GaussianDiffusion: noise layout, forward process, posterior, learned variance, VLB and the losses."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from d2it.errors import ConfigError
from d2it.layout import cell_grain, project_to_layout
from d2it_sampling.diffusion import GaussianDiffusion, gaussian_noise, space_timesteps
from d2it_sampling.schedules import linear_betas

BETAS = linear_betas()


def closed_form_alpha_bar(t: int) -> float:
    """ᾱ_t computed independently of the diffusion, in Python floats."""
    return math.prod(1.0 - float(b) for b in BETAS[: t + 1])


def grain_map_fixture():
    # (2, 2, 2) regions -> (4, 4) cells: a mix of coarse (0) and fine (1) regions
    return torch.tensor([[[0, 1], [1, 0]], [[1, 1], [0, 0]]])


# -- respacing ---------------------------------------------------------------------------------
def test_space_timesteps_like_adm():
    kept = space_timesteps(1000, 250)
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(10, "2,3") == [0, 4, 5, 7, 9]
    assert space_timesteps(10, [10]) == list(range(10))


def _dit_space_timesteps(num_timesteps, section_counts):
    """DiT's `space_timesteps` (diffusion/respace.py) for a list of counts, restated from its algorithm.

    Each section of `size` steps keeps `count` of them: start at 0, add the float stride
    (size - 1) / (count - 1) each time and round the running sum (Python's round, half to even).
    """
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start_idx, all_steps = 0, []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx, taken = 0.0, []
        for _ in range(section_count):
            taken.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        all_steps += taken
        start_idx += size
    return set(all_steps)


def test_space_timesteps_equals_dit_for_every_count():
    mismatched = [n for n in range(1, 1001) if space_timesteps(1000, n) != sorted(_dit_space_timesteps(1000, [n]))]
    assert mismatched == []
    assert 499 in space_timesteps(1000, 999) and 500 not in space_timesteps(1000, 999)  # the example
    for n in (1, 2, 250, 999, 1000):
        assert len(space_timesteps(1000, n)) == n


@pytest.mark.parametrize("sections", [[3, 7], [10, 20, 30], [1, 1, 1], [333, 1, 5]])
def test_space_timesteps_sections_equal_dit(sections):
    assert space_timesteps(1000, sections) == sorted(_dit_space_timesteps(1000, sections))
    assert space_timesteps(1000, ",".join(map(str, sections))) == sorted(_dit_space_timesteps(1000, sections))


@pytest.mark.parametrize("bad", [0, 11, "ddim7x", "ddim3000", "abc", True])
def test_space_timesteps_rejects_bad_counts(bad):
    with pytest.raises(ConfigError):
        space_timesteps(10, bad)


def test_respaced_process_keeps_alpha_bar_and_maps_time():
    base = GaussianDiffusion(BETAS)
    spaced = base.respace(50)
    kept = space_timesteps(1000, 50)
    assert spaced.num_timesteps == 50
    torch.testing.assert_close(spaced.alphas_cumprod, base.alphas_cumprod[kept])
    assert spaced.timestep_map.tolist() == kept
    twice = spaced.respace(10)  # respacing a respaced process composes the maps
    assert twice.timestep_map.tolist() == [kept[i] for i in space_timesteps(50, 10)]
    torch.testing.assert_close(twice.alphas_cumprod, base.alphas_cumprod[twice.timestep_map])
    assert base.respace(1000) is base


def test_model_sees_original_timesteps_under_respacing():
    spaced = GaussianDiffusion(BETAS, learn_sigma=False).respace(10)
    seen = []

    def model_fn(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    t = torch.tensor([0, 5, 9])
    spaced.p_mean_variance(model_fn, torch.zeros(3, 2, 4, 4), t)
    assert seen[0].tolist() == [spaced.timestep_map[i].item() for i in (0, 5, 9)]
    assert seen[0][-1].item() == 999


# -- noise -------------------------------------------------------------------------------------
def test_multigrain_noise_unit_variance_and_tied_coarse_cells():
    diffusion = GaussianDiffusion(BETAS, grains=2)
    grain_map = grain_map_fixture()[:1].expand(3000, 2, 2)
    noise = diffusion.noise((3000, 2, 4, 4), grain_map=grain_map, generator=torch.Generator().manual_seed(0))
    var = noise.var(dim=0)
    torch.testing.assert_close(var, torch.ones_like(var), atol=0.12, rtol=0)
    torch.testing.assert_close(noise.mean(dim=0), torch.zeros_like(var), atol=0.08, rtol=0)
    cells = cell_grain(grain_map[:1], 2)[0]
    # coarse region (0, 0): its four cells hold one draw; fine region (0, 1): four independent draws
    assert cells[:2, :2].eq(0).all() and cells[:2, 2:].eq(1).all()
    block = noise[:, :, :2, :2].flatten(2)
    assert torch.equal(block, block[..., :1].expand_as(block))
    fine = noise[:, 0, :2, 2:].flatten(1)
    corr = torch.corrcoef(fine.T)
    assert (corr - torch.eye(4)).abs().max() < 0.1
    torch.testing.assert_close(noise, project_to_layout(noise, grain_map, 2))


def test_iid_noise_without_a_grain_map():
    noise = gaussian_noise((2000, 1, 2, 2), generator=torch.Generator().manual_seed(0)).flatten(1)
    corr = torch.corrcoef(noise.T)
    assert (corr - torch.eye(4)).abs().max() < 0.1
    assert (noise.var(0) - 1).abs().max() < 0.12


def test_per_sample_generators_give_batch_independent_noise():
    grain_map = grain_map_fixture()
    for gm in (grain_map, None):
        both = gaussian_noise((2, 2, 4, 4), grain_map=gm, generator=[torch.Generator().manual_seed(i) for i in (5, 6)])
        second = gaussian_noise(
            (1, 2, 4, 4), grain_map=None if gm is None else gm[1:], generator=[torch.Generator().manual_seed(6)]
        )
        assert torch.equal(both[1:], second)
    with pytest.raises(ConfigError):
        gaussian_noise((2, 2, 4, 4), generator=[torch.Generator()])


def test_noise_rejects_a_grain_map_that_does_not_fit():
    with pytest.raises(ConfigError):
        gaussian_noise((2, 2, 8, 8), grain_map=grain_map_fixture(), grains=2)


# -- forward process and posterior ---------------------------------------------------------------
def test_q_sample_matches_closed_form():
    diffusion = GaussianDiffusion(BETAS)
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 400, 999])
    ab = torch.tensor([closed_form_alpha_bar(int(i)) for i in t], dtype=torch.float64).reshape(3, 1, 1, 1)
    expected = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise), expected.float(), rtol=1e-5, atol=1e-6)
    mean, var, log_var = diffusion.q_mean_variance(x0, t)
    torch.testing.assert_close(var, (1 - ab).float().expand_as(x0))
    torch.testing.assert_close(log_var, torch.log(1 - ab).float().expand_as(x0))


def test_q_sample_statistics_in_the_grain_layout():
    diffusion = GaussianDiffusion(BETAS, grains=2)
    n = 4000
    x0 = torch.full((n, 1, 4, 4), 0.5)
    t = torch.full((n,), 300)
    gm = grain_map_fixture()[:1].expand(n, 2, 2)
    x_t = diffusion.q_sample(x0, t, grain_map=gm, generator=torch.Generator().manual_seed(1))
    ab = closed_form_alpha_bar(300)
    assert abs(x_t.mean().item() - math.sqrt(ab) * 0.5) < 0.02
    assert abs(x_t.var(0).mean().item() - (1 - ab)) < 0.03
    assert torch.equal(x_t[:, :, 0, 0], x_t[:, :, 1, 1])  # a coarse region's cells move together


def test_q_posterior_matches_bayes_rule():
    diffusion = GaussianDiffusion(BETAS)
    x0, x_t = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([1, 500, 999])
    mean, var, log_var = diffusion.q_posterior_mean_variance(x0, x_t, t)
    for i, step in enumerate(t.tolist()):
        beta, ab_prev = float(BETAS[step]), closed_form_alpha_bar(step - 1)
        # q(x_t | x_{t-1}) = N(sqrt(1-β) x_{t-1}, β), q(x_{t-1} | x_0) = N(sqrt(ᾱ_{t-1}) x_0, 1 - ᾱ_{t-1})
        precision = (1 - beta) / beta + 1 / (1 - ab_prev)
        expected_mean = (math.sqrt(1 - beta) * x_t[i] / beta + math.sqrt(ab_prev) * x0[i] / (1 - ab_prev)) / precision
        torch.testing.assert_close(mean[i], expected_mean)
        torch.testing.assert_close(var[i], torch.full_like(var[i], 1 / precision))
        torch.testing.assert_close(log_var[i], torch.full_like(var[i], math.log(1 / precision)))
    # at t = 0 the posterior is x_0 itself and the log-variance is clipped to β̃_1
    mean0, var0, log_var0 = diffusion.q_posterior_mean_variance(x0, x_t, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(mean0, x0)
    assert torch.all(var0 == 0)
    torch.testing.assert_close(log_var0, torch.log(diffusion.posterior_variance[1]).expand_as(x0))


def test_learned_range_interpolates_log_beta_and_log_posterior_variance():
    diffusion = GaussianDiffusion(BETAS, learn_sigma=True)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    eps = torch.randn_like(x)
    t = torch.tensor([10, 10, 10])
    v = torch.stack([torch.full_like(x[0], value) for value in (-1.0, 0.0, 1.0)])
    out = diffusion.p_mean_variance_from_output(torch.cat([eps, v], 1), x, t)
    lo, hi = math.log(float(diffusion.posterior_variance[10])), math.log(float(BETAS[10]))
    for i, expected in enumerate((lo, (lo + hi) / 2, hi)):
        torch.testing.assert_close(out["log_variance"][i], torch.full_like(x[0], expected))
    torch.testing.assert_close(out["variance"], out["log_variance"].exp())
    # x̂_0 maps back to x_t with the predicted ε, and the mean is the posterior mean at x̂_0
    torch.testing.assert_close(diffusion.q_sample(out["pred_xstart"], t, eps), x)
    torch.testing.assert_close(out["mean"], diffusion.q_posterior_mean_variance(out["pred_xstart"], x, t)[0])


def test_fixed_variances_without_learned_sigma():
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 7])
    large = GaussianDiffusion(BETAS, learn_sigma=False).p_mean_variance_from_output(torch.zeros_like(x), x, t)
    assert large["variance"][1].allclose(BETAS[7].expand_as(x[1]))
    assert large["variance"][0].allclose(GaussianDiffusion(BETAS).posterior_variance[1].expand_as(x[0]))
    small = GaussianDiffusion(BETAS, learn_sigma=False, sigma_small=True).p_mean_variance_from_output(
        torch.zeros_like(x), x, t
    )
    assert small["variance"][1].allclose(GaussianDiffusion(BETAS).posterior_variance[7].expand_as(x[1]))


def test_wrong_output_width_is_an_error():
    diffusion = GaussianDiffusion(BETAS, learn_sigma=True)
    with pytest.raises(ConfigError, match="expects 4"):
        diffusion.p_mean_variance(lambda x, t: x, torch.zeros(1, 2, 4, 4), torch.zeros(1, dtype=torch.long))


def test_grain_weights_must_match_grains():
    with pytest.raises(ConfigError):
        GaussianDiffusion(BETAS, grains=2, grain_weights=(1.0, 1.0, 1.0))
    assert GaussianDiffusion(BETAS, grain_weights=(1.0, 2.0, 3.0)).grains == 3


# -- variational bound --------------------------------------------------------------------------
def test_vb_terms_are_the_gaussian_kl_in_bits():
    diffusion = GaussianDiffusion(BETAS, learn_sigma=True)
    g = torch.Generator().manual_seed(0)
    x0, x_t = (
        torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64),
        torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64),
    )
    output = torch.cat(
        [
            torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64),
            torch.rand(3, 2, 4, 4, generator=g, dtype=torch.float64) * 2 - 1,
        ],
        1,
    )
    t = torch.tensor([1, 200, 999])
    vb = diffusion.vb_terms(x0, x_t, t, output)
    true_mean, true_var, _ = diffusion.q_posterior_mean_variance(x0, x_t, t)
    p = diffusion.p_mean_variance_from_output(output, x_t, t)
    expected = kl_divergence(Normal(true_mean, true_var.sqrt()), Normal(p["mean"], p["variance"].sqrt())) / math.log(2)
    torch.testing.assert_close(vb, expected)
    assert torch.all(vb >= 0)


def test_vb_term_at_t0_is_the_decoder_nll():
    diffusion = GaussianDiffusion(BETAS, learn_sigma=True)
    x0 = torch.tensor([-1.0, -0.5, 0.0, 0.3, 1.0], dtype=torch.float64).reshape(1, 1, 1, 5)
    x_t = x0 + 0.01
    output = torch.cat([torch.full_like(x0, 0.1), torch.full_like(x0, 0.5)], 1)
    t = torch.zeros(1, dtype=torch.long)
    vb = diffusion.vb_terms(x0, x_t, t, output)
    p = diffusion.p_mean_variance_from_output(output, x_t, t)
    dist = Normal(p["mean"], p["variance"].sqrt())
    upper = torch.where(x0 > 0.999, torch.ones_like(x0), dist.cdf(x0 + 1 / 255))
    lower = torch.where(x0 < -0.999, torch.zeros_like(x0), dist.cdf(x0 - 1 / 255))
    expected = -torch.log(upper - lower) / math.log(2)
    torch.testing.assert_close(vb, expected, rtol=2e-2, atol=1e-3)


# -- training losses ----------------------------------------------------------------------------
class RecordingModel(torch.nn.Module):
    """A fake content model returning a fixed output (through a parameter) and recording its inputs."""

    def __init__(self, output):
        super().__init__()
        self.output = torch.nn.Parameter(output.clone())
        self.calls = []

    def forward(self, x, t, y, grain_map=None):
        self.calls.append({"x": x, "t": t, "y": y, "grain_map": grain_map})
        return self.output * 1.0


def manual_grain_means(values, grain_map):
    cells = cell_grain(grain_map, 2)[:, None].expand_as(values)
    return [values[cells == g].mean() for g in (0, 1)]


def test_training_losses_plain():
    diffusion = GaussianDiffusion(BETAS, learn_sigma=True)
    x0, noise = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    model = RecordingModel(torch.randn(2, 4, 4, 4).clamp(-1, 1))
    t, y = torch.tensor([0, 500]), torch.tensor([1, 2])
    terms = diffusion.training_losses(model, x0, t, y, noise=noise)
    assert set(terms) == {"loss", "mse", "vb"}
    assert all(v.shape == () for v in terms.values())
    assert model.calls[0]["grain_map"] is None and model.calls[0]["t"].tolist() == [0, 500]
    torch.testing.assert_close(model.calls[0]["x"], diffusion.q_sample(x0, t, noise))
    torch.testing.assert_close(terms["mse"], ((noise - model.output[:, :2]) ** 2).mean())
    x_t = diffusion.q_sample(x0, t, noise)
    torch.testing.assert_close(terms["vb"], diffusion.vb_terms(x0, x_t, t, model.output).mean())
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])


def test_vb_trains_only_the_variance_and_mse_only_the_mean():
    diffusion = GaussianDiffusion(BETAS, learn_sigma=True)
    model = RecordingModel(torch.randn(2, 4, 4, 4).clamp(-1, 1))
    terms = diffusion.training_losses(model, torch.randn(2, 2, 4, 4), torch.tensor([3, 600]), torch.tensor([0, 0]))
    (grad_vb,) = torch.autograd.grad(terms["vb"], model.output, retain_graph=True)
    (grad_mse,) = torch.autograd.grad(terms["mse"], model.output)
    assert torch.count_nonzero(grad_vb[:, :2]) == 0 and torch.count_nonzero(grad_vb[:, 2:]) > 0
    assert torch.count_nonzero(grad_mse[:, 2:]) == 0 and torch.count_nonzero(grad_mse[:, :2]) > 0


def test_vb_is_scaled_by_num_timesteps_over_1000():
    full = GaussianDiffusion(BETAS, learn_sigma=True)
    spaced = full.respace(100)
    x0, noise = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    model = RecordingModel(torch.randn(2, 4, 4, 4).clamp(-1, 1))
    t = torch.tensor([3, 60])
    terms = spaced.training_losses(model, x0, t, torch.tensor([0, 0]), noise=noise)
    raw = spaced.vb_terms(x0, spaced.q_sample(x0, t, noise), t, model.output).mean()
    torch.testing.assert_close(terms["vb"], raw * 0.1)
    assert model.calls[0]["t"].tolist() == spaced.timestep_map[t].tolist()


def test_training_losses_per_grain():
    grain_map = grain_map_fixture()
    diffusion = GaussianDiffusion(BETAS, learn_sigma=True, grain_weights=(2.0, 0.5))
    x0 = project_to_layout(torch.randn(2, 2, 4, 4), grain_map, 2)
    model = RecordingModel(torch.randn(2, 4, 4, 4).clamp(-1, 1))
    t, y = torch.tensor([0, 700]), torch.tensor([0, 1])
    g = torch.Generator().manual_seed(3)
    terms = diffusion.training_losses(model, x0, t, y, grain_map=grain_map, generator=g)
    assert set(terms) == {"loss", "mse", "vb", "mse_grain_0", "mse_grain_1", "vb_grain_0", "vb_grain_1"}
    call = model.calls[0]
    assert call["grain_map"] is grain_map
    # the noise the model saw was drawn in the grain layout
    noise = (call["x"] - diffusion.q_sample(x0, t, torch.zeros_like(x0))) / diffusion._extract(
        "sqrt_one_minus_alphas_cumprod", t, x0
    )
    torch.testing.assert_close(noise, project_to_layout(noise, grain_map, 2), atol=1e-5, rtol=0)
    mse_coarse, mse_fine = manual_grain_means((noise - model.output[:, :2]) ** 2, grain_map)
    torch.testing.assert_close(terms["mse_grain_0"], mse_coarse, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(terms["mse_grain_1"], mse_fine, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(terms["mse"], 2.0 * mse_coarse + 0.5 * mse_fine, rtol=1e-4, atol=1e-5)
    vb_coarse, vb_fine = manual_grain_means(diffusion.vb_terms(x0, call["x"], t, model.output), grain_map)
    torch.testing.assert_close(terms["vb_grain_0"], vb_coarse, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(terms["vb"], 2.0 * vb_coarse + 0.5 * vb_fine, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])


def test_grain_means_do_not_move_with_the_fine_ratio():
    """A uniform error gives the same loss whatever share of the image is fine."""
    diffusion = GaussianDiffusion(BETAS, learn_sigma=False)
    x0 = torch.zeros(1, 2, 4, 4)
    model = RecordingModel(torch.zeros(1, 2, 4, 4))
    noise = torch.full((1, 2, 4, 4), 0.5)
    losses = []
    for gm in ([[0, 0], [0, 1]], [[1, 1], [1, 0]]):
        losses.append(
            diffusion.training_losses(model, x0, torch.tensor([5]), torch.tensor([0]), torch.tensor([gm]), noise=noise)
        )
    for terms in losses:
        torch.testing.assert_close(terms["mse"], torch.tensor(0.5))  # 0.25 per grain, two grains
        assert terms["vb"] == 0 and terms["vb_grain_0"] == 0


def test_cell_grain_loss_is_the_plain_mean_over_cells():
    """grain_loss="cell" (the ablation without the dynamic grain loss) weighs every latent cell alike."""
    grain_map = grain_map_fixture()
    x0 = project_to_layout(torch.randn(2, 2, 4, 4), grain_map, 2)
    model = RecordingModel(torch.randn(2, 2, 4, 4))
    t, y, noise = torch.tensor([3, 500]), torch.tensor([0, 0]), torch.randn(2, 2, 4, 4)
    cell = GaussianDiffusion(BETAS, learn_sigma=False, grain_loss="cell")
    grain = GaussianDiffusion(BETAS, learn_sigma=False)
    a = cell.training_losses(model, x0, t, y, grain_map=grain_map, noise=noise)
    b = grain.training_losses(model, x0, t, y, grain_map=grain_map, noise=noise)
    torch.testing.assert_close(a["mse"], ((noise - model.output) ** 2).mean())
    torch.testing.assert_close(a["mse_grain_0"], b["mse_grain_0"])  # the per-grain logs stay
    assert not torch.allclose(a["mse"], b["mse"])
    assert cell.respace(10).grain_loss == "cell"
    with pytest.raises(ConfigError, match="unknown grain loss 'pixel'; valid: grain, cell"):
        GaussianDiffusion(BETAS, grain_loss="pixel")
