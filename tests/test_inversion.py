"""Inversion and reconstruction against closed forms (the toy oracle) and the shipped model."""

import math
from itertools import pairwise

import pytest
import torch

import ddim
from ddim.data import load_images, to_model_range
from ddim.denoising import denoise
from ddim.execution import Execution
from ddim.inversion import check_images, reconstruction_errors, upward_sequence
from ddim.schedule import NoiseSchedule, timesteps
from ddim.toy import MixtureDenoiser, gaussian_gain
from helpers import MNIST, needs_builtin, needs_mnist

SCHEDULE = NoiseSchedule.linear()


def test_upward_sequence_starts_at_zero_and_mirrors_sampling():
    assert upward_sequence([900, 600, 300, 0]) == [0, 300, 600, 900]
    assert upward_sequence([999, 666, 332]) == [0, 332, 666, 999]  # trailing: one more step 0 → τ_1


@pytest.mark.parametrize("spacing", ["uniform", "trailing"])
def test_inversion_on_a_gaussian_is_the_exact_linear_map(spacing):
    """For data N(0, s² I) every η = 0 step is linear with a known gain, upward as downward, and
    only if ε̂ is evaluated at the timestep each step starts from; the round trip multiplies
    x_0 by the product G of the gains up and down, which tends to 1 as S grows."""
    std = 0.5
    net = MixtureDenoiser(SCHEDULE, torch.zeros(1, 8), std)
    x0 = std * torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    gains = []
    for S in (10, 100):
        seq = timesteps(1000, S, spacing).tolist()
        up = gaussian_gain(SCHEDULE, std, upward_sequence(seq))
        x_T = ddim.invert(net, x0, steps=S, spacing=spacing, schedule=SCHEDULE)
        torch.testing.assert_close(x_T, up * x0, rtol=0, atol=1e-5)  # float32 over ≤ 101 steps
        gain = up * gaussian_gain(SCHEDULE, std, [*seq, -1])
        x_hat = ddim.sample(net, noise=x_T, schedule=SCHEDULE, steps=S, spacing=spacing)
        torch.testing.assert_close(x_hat, gain * x0, rtol=0, atol=1e-5)
        gains.append(gain)
    assert abs(gains[1] - 1) < abs(gains[0] - 1) / 5  # first order: ≈ 10× closer at 10× the steps


def test_round_trip_on_a_mixture_converges_at_first_order():
    """Two modes, exact ε̂. DDIM is a first-order discretization of the ODE (eq. 14), so the
    round-trip error should fall about 10× from S = 10 to S = 100; we ask for 4× (the small-S
    regime is not yet asymptotic), and at S = 100 for an RMS error under 5 % of the distance
    between the modes (2.0)."""
    means = torch.tensor([[-0.5] * 4, [0.5] * 4], dtype=torch.float64)
    net = MixtureDenoiser(SCHEDULE, means, torch.tensor([0.3, 0.2]), torch.tensor([0.4, 0.6]))
    x0 = net.sample_data(500, torch.Generator().manual_seed(1))[0].float()
    rmse = {}
    for S in (10, 100):
        x_hat = ddim.reconstruct(net, x0, steps=S, schedule=SCHEDULE)
        rmse[S] = (x_hat - x0).pow(2).mean().sqrt().item()
    assert rmse[100] < rmse[10] / 4, rmse
    assert rmse[100] < 0.05 * 2.0, rmse


def test_inversion_is_the_sampler_run_upward(tiny_model):
    """No second update rule: invert = denoise over 0, τ_1, …, τ_S with η = 0, batch-independent."""
    x0 = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seq = timesteps(100, 7, "uniform").tolist()
    with torch.no_grad():
        expected = denoise(tiny_model.net, x0, tiny_model.schedule, upward_sequence(seq))
    x_T = ddim.invert(tiny_model, x0, steps=7, execution=Execution(batch_size=2))
    torch.testing.assert_close(x_T, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(ddim.invert(tiny_model, x0, timesteps=seq), ddim.invert(tiny_model, x0, steps=7))
    assert torch.equal(ddim.invert(tiny_model, x0, steps=1), x0)  # S = 1: the latent of t = 0 is x0


def test_reconstruction_table_rows(tiny_model):
    x0 = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    uniform = reconstruction_errors(tiny_model, x0, (2, 5))
    assert [r.evaluations for r in uniform] == [3, 9]  # S − 1 up, S down
    rows = reconstruction_errors(tiny_model, x0, (2, 5), keep=3, spacing="trailing")
    assert [(r.steps, r.evaluations) for r in rows] == [(2, 4), (5, 10)]  # trailing: the step 0 → τ_1 too
    x_hat = ddim.reconstruct(tiny_model, x0, steps=5, spacing="trailing")
    assert rows[1].mse == pytest.approx((x_hat - x0).pow(2).mean().item(), rel=1e-5)
    torch.testing.assert_close(rows[1].examples, x_hat[:3])


@pytest.mark.parametrize(
    ("x0", "message"),
    [
        (torch.zeros(2, 3, 8, 8), r"shape \(3, 8, 8\) do not match the model's \(C, H, W\) = \(1, 8, 8\)"),
        (torch.zeros(2, 1, 6, 6), r"do not match"),
        (torch.full((2, 1, 8, 8), 255.0), r"scaled to \[-1, 1\].*got values in \[255, 255\]"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "to_model_range"),
        (torch.full((1, 1, 8, 8), math.nan), "NaN"),
        (torch.zeros(0, 1, 8, 8), "float tensor"),
    ],
)
def test_bad_images_are_refused(tiny_model, x0, message):
    with pytest.raises(ValueError, match=message):
        ddim.invert(tiny_model, x0, steps=3)


def test_ascending_sequences_with_noise_are_refused():
    with pytest.raises(ValueError, match="eta = 0"):
        denoise(MixtureDenoiser(SCHEDULE, torch.zeros(1, 2), 1.0), torch.zeros(1, 2), SCHEDULE, [0, 9], eta=1)
    with pytest.raises(ValueError, match="eta = 0"):
        denoise(MixtureDenoiser(SCHEDULE, torch.zeros(1, 2), 1.0), torch.zeros(1, 2), SCHEDULE, [0, 9],
                sampler="ddpm")  # fmt: skip


def test_plain_callables_skip_the_image_range_check():
    check_images(torch.full((1, 3), 5.0), lambda x, t: x)  # no declared data range: not checked
    with pytest.raises(ValueError, match="needs schedule="):
        ddim.invert(lambda x, t: x, torch.zeros(1, 3), steps=3)


@pytest.mark.slow
@needs_builtin("mnist")
@needs_mnist
def test_mnist_reconstruction_error_falls_with_steps():
    """The issue's must-show: Table 2 on 500 MNIST test images; MSE falls 10 → 100, < 0.01 at 100."""
    model = ddim.load("mnist")
    x0 = to_model_range(load_images(MNIST, key="x_test", resolution=model.image_shape[-1], limit=500))
    rows = reconstruction_errors(model, x0, (10, 20, 50, 100), execution=Execution(batch_size=100))
    mse = [r.mse for r in rows]
    assert all(a > b for a, b in pairwise(mse)), mse
    assert mse[-1] < 0.01, mse
