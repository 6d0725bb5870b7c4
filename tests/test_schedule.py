import math
import re
from itertools import pairwise

import pytest
import torch

from ddim.schedule import SPACINGS, NoiseSchedule, custom_timesteps, timesteps


def test_linear_schedule_values():
    s = NoiseSchedule.linear(1000, 1e-4, 0.02)
    assert s.betas.dtype == s.alpha_bar.dtype == torch.float64
    assert s.betas[0].item() == 1e-4
    assert s.betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    expected = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(1000))
    assert s.alpha_bar[-1].item() == pytest.approx(expected, rel=1e-10)
    assert s.alpha_bar[-1].item() == pytest.approx(4.0358e-5, rel=1e-4)  # DDPM's ᾱ_T
    assert (s.alpha_bar.diff() < 0).all()
    assert (s.alpha_bar > 0).all()
    assert (s.alpha_bar < 1).all()


def test_cosine_schedule_matches_closed_form():
    T, s0 = 1000, 0.008
    s = NoiseSchedule.cosine(T)
    f = [math.cos((t / T + s0) / (1 + s0) * math.pi / 2) ** 2 for t in range(T + 1)]
    for t in (0, 10, 500, 900):  # β is not clipped at these t
        assert s.alpha_bar[t].item() == pytest.approx(f[t + 1] / f[0], rel=1e-9)
    assert s.betas.max().item() == pytest.approx(0.999)  # the last β is clipped


def test_from_betas_round_trips_and_is_immutable():
    betas = torch.linspace(1e-3, 0.1, 50, dtype=torch.float64)
    s = NoiseSchedule.from_betas(betas.tolist())
    assert torch.equal(s.betas, betas)
    betas[0] = 0.5  # the schedule owns a copy
    assert s.betas[0].item() == pytest.approx(1e-3)
    with pytest.raises(AttributeError):
        s.betas = betas  # frozen


@pytest.mark.parametrize(
    ("betas", "message"),
    [
        ([], "non-empty"),
        ([[0.1]], "1-D"),
        ([0.1, 0.0], "(0, 1)"),
        ([0.1, 1.0], "(0, 1)"),
        ([float("nan")], "(0, 1)"),
    ],
)
def test_from_betas_rejects_bad_values(betas, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        NoiseSchedule.from_betas(betas)


@pytest.mark.parametrize(("args", "message"), [((0,), "num_timesteps"), ((10, 0.1, 0.01), "beta_start")])
def test_linear_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        NoiseSchedule.linear(*args)


def test_alpha_bar_at_clean_end_and_range():
    s = NoiseSchedule.linear(10, 1e-4, 0.02)
    assert s.alpha_bar_at(-1).item() == 1.0
    assert torch.equal(s.alpha_bar_at(torch.tensor([0, 9])), s.alpha_bar[[0, 9]])
    for bad in (-2, 10):
        with pytest.raises(ValueError, match=r"\[-1, 9\]"):
            s.alpha_bar_at(bad)


def test_q_sample_has_the_marginal_mean_and_variance():
    s = NoiseSchedule.linear()
    g = torch.Generator().manual_seed(0)
    n, std0 = 200_000, 0.5
    x0 = 0.3 + std0 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    t = torch.full((n,), 400)
    xt = s.q_sample(x0, t, torch.randn(n, 1, generator=g, dtype=torch.float64))
    a = s.alpha_bar[400].item()
    # standard errors: mean √(var/n) ≈ 2e-3, variance var·√(2/n) ≈ 2e-3; allow 5 of them
    assert xt.mean().item() == pytest.approx(math.sqrt(a) * 0.3, abs=0.01)
    assert xt.var().item() == pytest.approx(a * std0**2 + 1 - a, abs=0.01)


def test_uniform_spot_values():
    assert timesteps(1000, 10, "uniform").tolist() == list(range(900, -1, -100))
    assert timesteps(1000, 3, "uniform").tolist() == [666, 333, 0]  # exactly S steps, ⌊i·T/S⌋
    assert timesteps(1000, 1000, "uniform").tolist() == list(range(999, -1, -1))


def test_uniform_equals_official_range_when_s_divides_t():
    for S in (1, 2, 4, 5, 10, 20, 25, 50, 100, 125, 200, 250, 500, 1000):
        assert timesteps(1000, S, "uniform").tolist() == list(range(0, 1000, 1000 // S))[::-1]


def test_trailing_and_linspace_spot_values():
    assert timesteps(1000, 10, "trailing").tolist() == list(range(999, 0, -100))
    assert timesteps(1000, 1, "trailing").tolist() == [999]
    assert timesteps(1000, 10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]


@pytest.mark.parametrize("S", [2, 10, 20, 37, 50, 100, 500])
def test_quadratic_is_the_floor_of_the_exact_squares(S):
    # (i·√(0.8T)/(S−1))² = 0.8·T·i²/(S−1)², an exact rational: floor it with integers
    exact = sorted({(4 * 1000 * i * i) // (5 * (S - 1) ** 2) for i in range(S)}, reverse=True)
    assert timesteps(1000, S, "quadratic").tolist() == exact


def test_quadratic_spot_values_and_dropped_repeats():
    assert timesteps(1000, 10, "quadratic").tolist() == [800, 632, 483, 355, 246, 158, 88, 39, 9, 0]
    assert len(timesteps(1000, 100, "quadratic")) == 96  # documented: repeats near t = 0 dropped


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize(
    ("T", "S"), [(1000, 1), (1000, 7), (1000, 50), (1000, 999), (1000, 1000), (20, 20), (4000, 33)]
)
def test_every_spacing_is_strictly_decreasing_in_range(spacing, T, S):
    ts = timesteps(T, S, spacing, NoiseSchedule.linear(T))  # the schedule is read by logsnr only
    assert ts.dtype == torch.int64
    assert (ts.diff() < 0).all()
    assert ts.min() >= 0
    assert ts.max() <= T - 1
    assert len(ts) == S if spacing not in ("quadratic", "logsnr") else 1 <= len(ts) <= S


@pytest.mark.parametrize(
    "schedule", [NoiseSchedule.linear(), NoiseSchedule.cosine()], ids=["linear", "cosine"]
)
@pytest.mark.parametrize("S", [2, 5, 10, 20, 50, 200])
def test_logsnr_is_the_nearest_timestep_to_uniform_log_snr(schedule, S):
    """Ends at T − 1 and 0; every τ has, of all timesteps, the log SNR nearest to its point of
    the uniform grid, so it is off by at most half the gap to a neighbouring timestep."""
    log_snr = schedule.log_snr.tolist()
    T = len(log_snr)
    ts = timesteps(T, S, "logsnr", schedule).tolist()
    assert ts[0] == T - 1
    assert ts[-1] == 0
    assert all(a > b for a, b in pairwise(ts))
    grid = [log_snr[T - 1] + i * (log_snr[0] - log_snr[T - 1]) / (S - 1) for i in range(S)]
    nearest = [min(range(T), key=lambda t: abs(log_snr[t] - g)) for g in grid]  # brute force
    assert ts == sorted(set(nearest), reverse=True)
    for t, g in zip(nearest, grid, strict=True):
        gap = max(abs(log_snr[u] - log_snr[t]) for u in (t - 1, t + 1) if 0 <= u < T)
        assert abs(log_snr[t] - g) <= gap / 2 + 1e-12


def test_logsnr_spot_values_and_near_uniform_steps():
    schedule = NoiseSchedule.linear()
    ts = timesteps(1000, 10, "logsnr", schedule)
    assert ts.tolist() == [999, 886, 757, 603, 410, 202, 73, 22, 5, 0]
    steps = schedule.log_snr[ts].diff()  # every step 1/9 of the range, up to the rounding above
    target = (schedule.log_snr[0] - schedule.log_snr[-1]) / 9
    assert (steps / target - 1).abs().max() < 0.025
    assert len(timesteps(1000, 50, "logsnr", schedule)) == 49  # documented: a repeat near t = 0


@pytest.mark.parametrize(
    ("steps", "spacing", "message"),
    [
        (0, "uniform", r"\[1, 1000\]"),
        (1001, "uniform", r"\[1, 1000\]"),
        (2.5, "uniform", "integer"),
        (10, "cubic", "unknown spacing 'cubic'"),
        (10, "logsnr", "logsnr spacing needs the schedule of the 1000 timesteps"),
    ],
)
def test_timesteps_rejects_bad_arguments(steps, spacing, message):
    with pytest.raises(ValueError, match=message):
        timesteps(1000, steps, spacing)


def test_logsnr_needs_the_schedule_of_the_same_length():
    with pytest.raises(ValueError, match="got one of 100 timesteps"):
        timesteps(1000, 10, "logsnr", NoiseSchedule.linear(100))


def test_custom_timesteps_sorted_and_validated():
    assert custom_timesteps(1000, [0, 500, 999]).tolist() == [999, 500, 0]
    assert custom_timesteps(1000, torch.tensor([10, 5])).tolist() == [10, 5]
    for bad, message in [
        ([], "non-empty"),
        ([1000], r"\[0, 999\]"),
        ([-1, 3], r"\[0, 999\]"),
        ([5, 5], "distinct"),
        ([1.5], "integers"),
    ]:
        with pytest.raises(ValueError, match=message):
            custom_timesteps(1000, bad)
