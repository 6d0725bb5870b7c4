"""The analytic oracle against brute force: grid integration and the orthogonality principle."""

import math

import pytest
import torch

import ddim
from ddim.models.parameterization import from_x0_eps
from ddim.schedule import NoiseSchedule
from ddim.toy import MixtureDenoiser, glyphs, probability_flow, toy_model

SCHEDULE = NoiseSchedule.linear()


def _grid_posterior_mean(
    net: MixtureDenoiser, x_t: torch.Tensor, a: float, grid: torch.Tensor
) -> torch.Tensor:
    """E[x0 | x_t] = ∫ x0 p(x0) N(x_t; √a x0, 1 − a) dx0 / ∫ p(x0) N(…) dx0 on a grid of x0 (G, D)."""
    d = grid.shape[1]
    log_p = torch.stack(
        [
            w.log() - 0.5 * d * torch.log(2 * torch.pi * s**2) - ((grid - mu) ** 2).sum(1) / (2 * s**2)
            for mu, s, w in zip(net.means, net.stds, net.weights, strict=True)
        ]
    ).logsumexp(0)  # (G,) log density of the mixture
    log_lik = -((x_t[:, None, :] - a**0.5 * grid[None]) ** 2).sum(-1) / (2 * (1 - a))  # (B, G)
    post = torch.softmax(log_p[None] + log_lik, dim=1)  # (B, G)
    return post @ grid


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("t", [50, 300, 900])
def test_posterior_mean_matches_grid_integration(dims, t):
    means = torch.tensor([[-1.0, 0.5], [0.8, -0.2], [0.3, 1.2]], dtype=torch.float64)[:, :dims]
    net = MixtureDenoiser(SCHEDULE, means, torch.tensor([0.2, 0.4, 0.3]), torch.tensor([0.5, 0.2, 0.3]))
    axis = torch.linspace(-4, 4, 1601 if dims == 1 else 401, dtype=torch.float64)
    grid = axis[:, None] if dims == 1 else torch.cartesian_prod(axis, axis)
    x_t = torch.randn(8, dims, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    a = SCHEDULE.alpha_bar[t]
    x0, eps = net.posterior(x_t, a.expand(8))
    torch.testing.assert_close(x0, _grid_posterior_mean(net, x_t, a.item(), grid), rtol=0, atol=1e-6)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps)  # consistent pair


def test_eps_prediction_is_the_conditional_mean():
    """Orthogonality: the residual ε − E[ε | x_t] has mean 0 and is uncorrelated with any f(x_t)."""
    means = torch.randn(4, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    net = MixtureDenoiser(SCHEDULE, means, torch.tensor([0.1, 0.3, 0.5, 0.2]))
    g = torch.Generator().manual_seed(1)
    n = 40_000
    x0, _ = net.sample_data(n, g)
    eps = torch.randn(n, 16, generator=g, dtype=torch.float64)
    t = torch.full((n,), 200)
    eps_hat = net(SCHEDULE.q_sample(x0, t, eps), t)
    residual = eps - eps_hat
    # each entry is a mean of n terms with variance ≤ 1 (resp. ≤ E[ε̂²] ≤ 1): 5/√n ≈ 0.025
    assert residual.mean(0).abs().max() < 5 / n**0.5
    assert (residual * eps_hat).mean(0).abs().max() < 5 / n**0.5
    assert (residual * eps_hat).mean(0).abs().max() < 0.1 * (eps_hat**2).mean()  # not trivially small


def test_sample_data_draws_the_mixture():
    net = MixtureDenoiser(
        SCHEDULE, torch.tensor([[-3.0], [3.0]]), torch.tensor([0.5, 1.0]), torch.tensor([0.25, 0.75])
    )
    x, k = net.sample_data(100_000, torch.Generator().manual_seed(0))
    assert (k == 1).double().mean().item() == pytest.approx(0.75, abs=0.006)  # 4.4 s.e.
    assert x[k == 1].std().item() == pytest.approx(1.0, abs=0.01)
    assert x[k == 0].mean().item() == pytest.approx(-3.0, abs=0.01)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_forward_returns_the_requested_prediction(prediction):
    net = MixtureDenoiser(SCHEDULE, torch.zeros(1, 3), 0.5, prediction=prediction)
    x_t, t = torch.randn(4, 3), torch.full((4,), 100)
    a = SCHEDULE.alpha_bar[100]
    x0, eps = net.posterior(x_t, a.expand(4))
    torch.testing.assert_close(net(x_t, t), from_x0_eps(x0, eps, a, prediction).float())


def test_builtin_toy_model_samples_its_glyphs():
    model = toy_model()
    shapes = glyphs(32)
    assert shapes.shape == (8, 1, 32, 32)
    assert len({tuple(s.flatten().tolist()) for s in shapes}) == 8  # eight different glyphs
    x = ddim.sample(model, 16, steps=50, seed=0)
    nearest = torch.cdist(x.flatten(1), shapes.flatten(1).float()).min(1).values
    # a draw is its glyph plus N(0, 0.1²) per pixel: distance ≈ 0.1·√1024 = 3.2 (DDIM at S = 50 shrinks it)
    assert (nearest < 3.5).all()
    assert ddim.load("toy").image_shape == (1, 32, 32)


def test_mixture_arguments_are_validated():
    with pytest.raises(ValueError, match="positive weight"):
        MixtureDenoiser(SCHEDULE, torch.zeros(2, 3), 0.1, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="unknown prediction"):
        MixtureDenoiser(SCHEDULE, torch.zeros(2, 3), 0.1, prediction="score")


def test_conditional_mixture_is_each_component_alone_and_the_null_class_the_mixture():
    means = torch.tensor([[-1.0, 0.5], [0.8, -0.2], [0.3, 1.2]], dtype=torch.float64)
    stds, weights = torch.tensor([0.2, 0.4, 0.3]), torch.tensor([0.5, 0.2, 0.3])
    net = MixtureDenoiser(SCHEDULE, means, stds, weights, prediction="v", conditional=True)
    unconditional = MixtureDenoiser(SCHEDULE, means, stds, weights, prediction="v")
    x_t, t = torch.randn(6, 2, dtype=torch.float64), torch.tensor([10, 200, 500, 800, 999, 0])
    y = torch.tensor([0, 1, 2, 3, 3, 1])
    out = net(x_t, t, y)
    for i, k in enumerate(y.tolist()):
        alone = (
            MixtureDenoiser(SCHEDULE, means[k : k + 1], stds[k], prediction="v") if k < 3 else unconditional
        )
        torch.testing.assert_close(out[i], alone(x_t[i : i + 1], t[i : i + 1])[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(net(x_t, t), unconditional(x_t, t), rtol=0, atol=0)
    assert net.config.num_classes == 3
    assert unconditional.config.num_classes is None
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(x_t, t, y)


@pytest.mark.parametrize(("t0", "t1"), [(999, -1), (960, 0), (500, 100)])
def test_probability_flow_is_the_gaussian_ode_solution(t0, t1):
    """For data N(μ, s² I) the ODE maps x_t to √ᾱ' μ + √(v'/v)(x_t − √ᾱ μ), v = ᾱ s² + 1 − ᾱ: the
    monotone map between the two Gaussian marginals. RK4 with 400 steps: error below 1e-6."""
    mu, s = torch.tensor([[0.5, -0.3, 1.0]], dtype=torch.float64), 0.2
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a0, a1 = SCHEDULE.alpha_bar_at(t0).item(), SCHEDULE.alpha_bar_at(t1).item()
    v0, v1 = a0 * s**2 + 1 - a0, a1 * s**2 + 1 - a1
    exact = math.sqrt(a1) * mu + math.sqrt(v1 / v0) * (x - math.sqrt(a0) * mu)
    got = probability_flow(MixtureDenoiser(SCHEDULE, mu, s), x, a0, a1)
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-6)
