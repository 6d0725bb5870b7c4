"""The sampler against closed forms: DDPM's posterior, the paper's σ̂, and exact Gaussian maps."""

import math

import pytest
import torch

import ddim
from ddim.denoising import denoise
from ddim.models import Model
from ddim.sampling import sample_generator
from ddim.schedule import NoiseSchedule, timesteps
from ddim.toy import MixtureDenoiser, gaussian_gain
from ddim.update import ddim_step, sigma_eta

SCHEDULE = NoiseSchedule.linear()


def test_eta_one_with_every_step_is_the_ddpm_posterior():
    """η = 1, S = T: eq. 12 has the mean and variance of q(x_{t−1} | x_t, x0) (DDPM eqs. 6–7)."""
    g = torch.Generator().manual_seed(0)
    betas, ab = SCHEDULE.betas, SCHEDULE.alpha_bar
    for t in (999, 500, 100, 1):
        x0, eps = torch.randn(2, 16, generator=g, dtype=torch.float64)
        a_t, a_prev, beta = ab[t].item(), ab[t - 1].item(), betas[t].item()
        x_t = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * eps
        mean = (math.sqrt(a_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - a_prev) * x_t) / (1 - a_t)
        var = (1 - a_prev) / (1 - a_t) * beta  # β̃_t
        sigma = sigma_eta(a_t, a_prev, 1.0)
        torch.testing.assert_close(ddim_step(x0, eps, a_prev, sigma), mean, rtol=0, atol=1e-12)
        assert sigma**2 == pytest.approx(var, rel=1e-12)


def test_eta_zero_adds_no_noise_and_last_step_returns_x0():
    assert sigma_eta(0.5, 0.7, 0.0) == 0.0
    assert sigma_eta(0.5, 1.0, 1.0) == 0.0  # the step to clean data is deterministic for every η
    x0, eps = torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(ddim_step(x0, eps, 1.0, 0.0), x0)


def _constant_eps(value: float):
    return lambda x, t: torch.full_like(x, value)


def test_ddpm_large_is_the_official_ddpm_noisy_step():
    """σ̂: posterior mean from the clipped x̂0, noise std √(1 − ᾱ_t/ᾱ_prev) (official `ddpm_steps`)."""
    x = torch.linspace(-2.5, 2.5, 12, dtype=torch.float64).reshape(1, 12)
    z = torch.randn(1, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t, t_prev = 600, 400
    at, atm1 = SCHEDULE.alpha_bar[t].item(), SCHEDULE.alpha_bar[t_prev].item()
    e = torch.full_like(x, 0.3)
    x0 = ((1 / at) ** 0.5 * x - (1 / at - 1) ** 0.5 * e).clamp(-1, 1)
    beta_t = 1 - at / atm1
    mean = (atm1**0.5 * beta_t * x0 + (1 - beta_t) ** 0.5 * (1 - atm1) * x) / (1 - at)
    expected = mean + beta_t**0.5 * z
    got = denoise(
        _constant_eps(0.3), x, SCHEDULE, [t, t_prev], sampler="ddpm-large", clip=True, step_noise=lambda: z
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    last = denoise(
        _constant_eps(0.3), x, SCHEDULE, [t, -1], sampler="ddpm-large", clip=True, step_noise=lambda: z
    )
    torch.testing.assert_close(last, ((1 / at) ** 0.5 * x - (1 / at - 1) ** 0.5 * e).clamp(-1, 1))  # no noise


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "trailing", "linspace"])
def test_ddim_on_a_gaussian_is_the_exact_linear_map(spacing):
    mu, std = torch.tensor([[0.5, -1.0, 2.0]]), 0.3
    net = MixtureDenoiser(SCHEDULE, mu, std)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    ts = timesteps(1000, 50, spacing).tolist()
    x = ddim.sample(net, noise=x_T, schedule=SCHEDULE, steps=50, spacing=spacing)
    gain = gaussian_gain(SCHEDULE, std, [*ts, -1])
    expected = mu + gain * (x_T - SCHEDULE.alpha_bar[ts[0]].sqrt().item() * mu)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)  # float32 arithmetic over 50 steps


# A two-mode mixture in D = 4 dimensions, far apart (no sample lands nearer the wrong mean).
MEANS, STDS, WEIGHTS = (
    torch.tensor([[-2.0] * 4, [2.0] * 4]),
    torch.tensor([0.3, 0.2]),
    torch.tensor([0.3, 0.7]),
)


def _mode_statistics(x: torch.Tensor):
    k = torch.cdist(x.double(), MEANS.double()).argmin(1)
    return [(x[k == j].double(), (k == j).double().mean().item()) for j in range(2)]


@pytest.mark.parametrize("steps", [50, 1000])
def test_ddim_maps_gaussian_noise_to_the_mixture(steps):
    """Tolerances are 4 standard errors at n = 8000 (weights √(w(1−w)/n) ≈ 0.005; means
    s/√n_k ≤ 0.011; variances s²√(2/(n_k·D)) ≤ 1.5 %). At S = 50, DDIM shrinks each mode's
    variance (deterministic discretization error): the exact linear map of an isolated Gaussian
    gives c² = 0.84 s² and 0.78 s² here, and the mixture's variances must lie between that and s²."""
    n = 8000
    net = MixtureDenoiser(SCHEDULE, MEANS, STDS, WEIGHTS)
    x = ddim.sample(net, n, shape=(4,), schedule=SCHEDULE, steps=steps, seed=0)
    ts = timesteps(1000, steps).tolist()
    for j, (xs, weight) in enumerate(_mode_statistics(x)):
        w, s, n_k = WEIGHTS[j].item(), STDS[j].item(), len(xs)
        assert abs(weight - w) < 4 * math.sqrt(w * (1 - w) / n)
        assert (xs.mean(0) - MEANS[j]).abs().max().item() < 4 * s / math.sqrt(n_k)
        ratio, se = xs.var(0).mean().item() / s**2, math.sqrt(2 / (n_k * 4))
        lower = gaussian_gain(SCHEDULE, s, [*ts, -1]) ** 2 / s**2
        assert lower - 4 * se < ratio < 1 + 4 * se, (j, ratio, lower)
        if steps == 1000:
            assert lower > 0.98  # so at S = T the variances match the data within 2 % + 4 s.e.


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_parameterizations_give_the_same_samples(prediction):
    means = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    models = [
        Model(MixtureDenoiser(SCHEDULE, means, 0.1, prediction=p), SCHEDULE, (1, 4, 4), p)
        for p in ("eps", prediction)
    ]
    a, b = (ddim.sample(m, 16, steps=20, eta=0.5, seed=1) for m in models)
    torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


def test_eta_zero_is_deterministic_and_seeds_matter(tiny_model):
    a = ddim.sample(tiny_model, 4, steps=5, seed=7)
    assert torch.equal(a, ddim.sample(tiny_model, 4, steps=5, seed=7))
    assert not torch.allclose(a, ddim.sample(tiny_model, 4, steps=5, seed=8))


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_same_seed_and_index_give_the_same_image_whatever_the_batch(tiny_model, eta):
    """Equal up to float32 rounding (convolution kernels differ by batch size): 1e-5 of the
    largest value, while another seed changes every pixel by O(1) of it."""
    full = ddim.sample(tiny_model, 7, steps=6, eta=eta, seed=3)
    same = {"rtol": 0, "atol": 1e-5 * full.abs().max().item()}
    for batch_size in (1, 3, 7):
        batched = ddim.sample(tiny_model, 7, steps=6, eta=eta, seed=3, batch_size=batch_size)
        torch.testing.assert_close(batched, full, **same)
    torch.testing.assert_close(ddim.sample(tiny_model, 4, steps=6, eta=eta, seed=3), full[:4], **same)
    shard = ddim.sample(tiny_model, 3, steps=6, eta=eta, seed=3, start_index=4)  # samples 4, 5, 6
    torch.testing.assert_close(shard, full[4:], **same)


def test_given_latents_reproduce_the_seeded_samples_even_with_noise(tiny_model):
    x_T = torch.stack([torch.randn(1, 8, 8, generator=sample_generator(5, i, 0)) for i in range(3)])
    seeded = ddim.sample(tiny_model, 3, steps=8, eta=1.0, seed=5)
    torch.testing.assert_close(ddim.sample(tiny_model, noise=x_T, steps=8, eta=1.0, seed=5), seeded)


def test_eta_changes_samples_and_ddpm_is_eta_one(tiny_model):
    base = ddim.sample(tiny_model, 2, steps=10, eta=0.0, seed=0)
    ddpm = ddim.sample(tiny_model, 2, steps=10, sampler="ddpm", seed=0)
    assert not torch.allclose(base, ddpm)
    torch.testing.assert_close(ddpm, ddim.sample(tiny_model, 2, steps=10, eta=1.0, seed=0))


def test_trajectory_records_every_state(tiny_model):
    x, traj = ddim.sample(tiny_model, 3, steps=4, seed=0, return_trajectory=True, batch_size=2)
    assert traj.timesteps.tolist() == [*timesteps(100, 4).tolist(), -1]
    assert traj.xt.shape == (5, 3, 1, 8, 8)
    assert traj.x0.shape == (4, 3, 1, 8, 8)
    torch.testing.assert_close(traj.xt[-1], x)
    torch.testing.assert_close(traj.x0[-1], x)  # the last step (ᾱ = 1, σ = 0) returns x̂0
    x_T = torch.stack([torch.randn(1, 8, 8, generator=sample_generator(0, i, 0)) for i in range(3)])
    torch.testing.assert_close(traj.xt[0], x_T)


def test_on_step_sees_every_step_of_every_batch_and_can_stop(tiny_model):
    seen = []
    x, traj = ddim.sample(tiny_model, 3, steps=4, seed=0, batch_size=2, return_trajectory=True,
                          on_step=lambda info: seen.append(info))  # fmt: skip
    assert [(s.index, s.x.shape[0]) for s in seen] == [(i, 2) for i in range(4)] + [(i, 1) for i in range(4)]
    torch.testing.assert_close(seen[3].x, x[:2])
    torch.testing.assert_close(torch.cat([seen[1].x0, seen[5].x0]), traj.x0[1])

    class StopError(Exception):
        pass

    def stop_at_two(info):
        if info.index == 2:
            raise StopError

    with pytest.raises(StopError):
        ddim.sample(tiny_model, 1, steps=4, on_step=stop_at_two)


def test_explicit_timesteps_and_clip(tiny_model):
    a = ddim.sample(tiny_model, 2, timesteps=[99, 50, 0], seed=0)
    torch.testing.assert_close(a, ddim.sample(tiny_model, 2, timesteps=[0, 50, 99], seed=0))
    clipped, traj = ddim.sample(tiny_model, 2, steps=3, clip=True, seed=0, return_trajectory=True)
    assert traj.x0.abs().max() <= 1
    assert clipped.abs().max() <= 1


def test_sampling_uses_eval_mode_and_restores_the_mode(make_tiny_model):
    model = make_tiny_model(dropout=0.5)
    model.net.train()
    a, b = (ddim.sample(model, 2, steps=3, seed=0) for _ in range(2))
    assert torch.equal(a, b)  # no dropout while sampling
    assert model.net.training


def test_bf16_precision_is_close_to_fp32(tiny_model):
    fp32 = ddim.sample(tiny_model, 4, steps=5, seed=0)
    bf16 = ddim.sample(tiny_model, 4, steps=5, seed=0, precision="bf16")
    assert bf16.dtype == torch.float32
    assert not torch.equal(fp32, bf16)  # autocast really ran in bf16
    assert (bf16 - fp32).norm() / fp32.norm() < 0.05  # bf16 keeps 8 bits: ~0.4 % per op


def test_ascending_sequences_are_deterministic_only():
    with pytest.raises(ValueError, match="eta = 0"):
        denoise(
            _constant_eps(0.0), torch.zeros(1, 2), SCHEDULE, [0, 10, 20], eta=0.5, step_noise=lambda: None
        )


@pytest.mark.parametrize("ts", [[10], [10, 10], [30, 10, 20], [-1, 5], [10, -1, 5], [1000, 0], [5, -2]])
def test_denoise_refuses_malformed_sequences(ts):
    with pytest.raises(ValueError, match="timesteps must be"):
        denoise(_constant_eps(0.0), torch.zeros(1, 2), SCHEDULE, ts)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, r"steps must be an integer in \[1, 100\]"),
        ({"steps": 101}, r"steps must be an integer in \[1, 100\]"),
        ({"eta": -0.1}, r"eta must be a number in \[0, 1\]"),
        ({"eta": 1.5}, r"eta must be a number in \[0, 1\]"),
        ({"n": 0}, "n must be a positive integer"),
        ({"spacing": "cubic"}, "unknown spacing 'cubic'"),
        ({"sampler": "euler"}, "unknown sampler 'euler'"),
        ({"sampler": "ddpm", "eta": 0.5}, "only for sampler 'ddim'"),
        ({"batch_size": 0}, "batch_size"),
        ({"precision": "int8"}, "unknown precision"),
        ({"seed": -1}, "seed"),
        ({"noise": torch.zeros(2, 3, 8, 8)}, r"does not match the model's image shape \(1, 8, 8\)"),
        ({"n": 3, "noise": torch.zeros(2, 1, 8, 8)}, "disagrees"),
        ({"timesteps": [50, 10], "steps": 3}, "disagrees"),
        ({"timesteps": [100]}, r"\[0, 99\]"),
    ],
)
def test_invalid_arguments_are_refused(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ddim.sample(tiny_model, **{"n": 2, **kwargs})


def test_plain_callables_need_a_schedule_and_a_shape():
    eps_fn = _constant_eps(0.0)
    with pytest.raises(ValueError, match="needs schedule="):
        ddim.sample(eps_fn, 2, shape=(3,))
    with pytest.raises(ValueError, match="noise= or shape="):
        ddim.sample(eps_fn, 2, schedule=SCHEDULE)
    with pytest.raises(ValueError, match="model must be"):
        ddim.sample("toy", 2)
    assert ddim.sample(eps_fn, 2, shape=(3,), schedule=SCHEDULE, steps=2, seed=0).shape == (2, 3)
