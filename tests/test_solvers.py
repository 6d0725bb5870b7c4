"""The higher-order solvers (DPM-Solver++(2M), UniPC, PLMS) against closed forms and the exact ODE.

References, none of them our solver code:
- single steps: the update formulas as the papers write them (DPM-Solver++'s exponential
  integrator in λ; PNDM's transfer φ with the Adams–Bashforth combination of ε̂), on networks
  whose outputs are fixed vectors, so every step has a closed form;
- whole runs: `toy.probability_flow`, the mixture's ODE integrated by RK4 to 1e-8
  (tests/test_toy.py checks it against the Gaussian closed form), and diffusers'
  DPMSolverMultistepScheduler, an independent implementation of DPM-Solver++(2M).
"""

import math
import re
from itertools import pairwise

import pytest
import torch

import ddim
from ddim.denoising import StepInfo, denoise
from ddim.models import Model
from ddim.schedule import NoiseSchedule
from ddim.serve.limits import Limits
from ddim.serve.schemas import request_models
from ddim.solvers import ADAMS_BASHFORTH, unic_data
from ddim.toy import MixtureDenoiser, probability_flow
from ddim.update import Evaluation
from helpers import diffusers_dpm_solver, run_cli

SCHEDULE = NoiseSchedule.linear()
SOLVERS = ["dpm-solver++", "unipc", "plms"]
# A three-mode 2-D mixture whose modes overlap at moderate noise: a curved ODE, not a linear one.
MEANS = torch.tensor([[-0.6, -0.2], [0.5, 0.4], [0.1, -0.7]], dtype=torch.float64)
STDS, WEIGHTS = torch.tensor([0.3, 0.2, 0.25]), torch.tensor([0.3, 0.3, 0.4])


def _mixture(prediction: str = "eps") -> MixtureDenoiser:
    return MixtureDenoiser(SCHEDULE, MEANS, STDS, WEIGHTS, prediction=prediction)


def _x(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _states(net, x, ts, sampler) -> list[torch.Tensor]:
    """x after every step of `denoise`."""
    seen: list[StepInfo] = []
    denoise(net, x, SCHEDULE, ts, sampler=sampler, on_step=seen.append)
    return [s.x for s in seen]


def _alpha_sigma_lambda(t: int) -> tuple[float, float, float]:
    a = SCHEDULE.alpha_bar[t].item()
    return math.sqrt(a), math.sqrt(1 - a), math.log(math.sqrt(a) / math.sqrt(1 - a))


def test_dpm_solver_steps_are_the_closed_form():
    """A network whose x̂_0 at t is a fixed m_t: ε(x, t) = (x − α_t m_t)/σ_t. DPM-Solver++ then
    takes, with h = λ_t − λ_s, x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D (Lu et al. 2022):
    D = m_s on the first step, (1 + 1/(2r)) m_s − 1/(2r) m_s' after it, and the step to clean
    data returns the network's x̂_0."""
    ts = [900, 650, 300, 120]
    m = {t: torch.randn(1, 3, generator=torch.Generator().manual_seed(t), dtype=torch.float64) for t in ts}

    def net(x, t):
        alpha, sigma, _ = _alpha_sigma_lambda(int(t[0]))
        return (x - alpha * m[int(t[0])]) / sigma

    x = torch.randn(1, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = _states(net, x, [*ts, -1], "dpm-solver++")
    expected, earlier = [x], []  # earlier: (λ, x̂_0) of the steps before
    for s, t in pairwise(ts):
        (_, sigma_s, lambda_s), (alpha_t, sigma_t, lambda_t) = _alpha_sigma_lambda(s), _alpha_sigma_lambda(t)
        h = lambda_t - lambda_s
        d = m[s]
        if earlier:
            r = (lambda_s - earlier[-1][0]) / h
            d = (1 + 1 / (2 * r)) * m[s] - 1 / (2 * r) * earlier[-1][1]
        expected.append(sigma_t / sigma_s * expected[-1] - alpha_t * (math.exp(-h) - 1) * d)
        earlier.append((lambda_s, m[s]))
    for k in range(len(ts) - 1):
        torch.testing.assert_close(got[k], expected[k + 1], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[-1], m[ts[-1]], rtol=0, atol=1e-12)  # first order to ᾱ = 1: x̂_0


def test_plms_steps_are_adams_bashforth_with_the_pndm_transfer():
    """A network returning a fixed ε_t: PLMS steps x by PNDM's transfer φ with ε' the
    Adams–Bashforth combination of the ε seen so far (orders 1, 2, 3, then 4)."""
    ts = [950, 800, 640, 500, 350, 220, 90, 0]
    e = {t: torch.randn(2, 4, generator=torch.Generator().manual_seed(t), dtype=torch.float64) for t in ts}
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = _states(lambda x, t: e[int(t[0])], x, ts, "plms")
    coefficients = [(1,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24)]
    for k, (t, t_next) in enumerate(pairwise(ts)):
        a, a_next = SCHEDULE.alpha_bar[t].item(), SCHEDULE.alpha_bar[t_next].item()
        c = coefficients[min(k, 3)]
        eps = sum(c[j] * e[ts[k - j]] for j in range(len(c)))
        start = x if k == 0 else got[k - 1]
        # φ(x, ε, t, t') of PNDM: √(ᾱ'/ᾱ) x − (ᾱ' − ᾱ) ε / (√ᾱ (√((1 − ᾱ')ᾱ) + √((1 − ᾱ)ᾱ')))
        denominator = math.sqrt(a) * (math.sqrt((1 - a_next) * a) + math.sqrt((1 - a) * a_next))
        phi = math.sqrt(a_next / a) * start - (a_next - a) / denominator * eps
        torch.testing.assert_close(got[k], phi, rtol=0, atol=1e-12)
    assert tuple(coefficients) == ADAMS_BASHFORTH


def test_unipc_corrector_weights():
    """UniC-2 makes the step s → t exact for an x̂_0 that is a quadratic in λ: D_c weighs
    (x̂_0(t), x̂_0(s), x̂_0(s')) by ∫ e^λ ℓ_j(λ) dλ / ∫ e^λ dλ over [λ_s, λ_t], ℓ_j the Lagrange
    basis through the three λ — computed here by quadrature, not by the φ-function recursion
    of the code. For nearly equal small steps these tend to Adams–Moulton's (5, 8, −1)/12;
    without an earlier evaluation, the trapezoid (UniC-1 with the authors' ρ = 1/2)."""
    basis = torch.eye(3, dtype=torch.float64)

    def weights(*ts: int) -> torch.Tensor:  # of (now, prev, earlier)
        earlier, prev, now = (Evaluation(t, basis[2 - k], basis[2 - k]) for k, t in enumerate(ts))
        return unic_data(SCHEDULE, earlier, prev, now)

    def quadrature(*ts: int) -> torch.Tensor:
        lam = [_alpha_sigma_lambda(t)[2] for t in reversed(ts)]  # λ of (now, prev, earlier)
        grid = torch.linspace(lam[1], lam[0], 200_001, dtype=torch.float64)
        density = grid.exp()
        lagrange = [
            math.prod((grid - lam[k]) / (lam[j] - lam[k]) for k in range(3) if k != j) for j in range(3)
        ]
        return torch.stack([torch.trapezoid(density * ell, grid) for ell in lagrange]) / torch.trapezoid(
            density, grid
        )

    for ts in [(900, 600, 100), (999, 500, 499), (30, 20, 0), (700, 400, 390)]:
        torch.testing.assert_close(weights(*ts), quadrature(*ts), rtol=0, atol=1e-8)
    torch.testing.assert_close(weights(502, 501, 500), torch.tensor([5, 8, -1], dtype=torch.float64) / 12,
                               rtol=0, atol=3e-3)  # fmt: skip
    trapezoid = unic_data(
        SCHEDULE, None, Evaluation(600, basis[1], basis[1]), Evaluation(300, basis[0], basis[0])
    )
    torch.testing.assert_close(trapezoid, torch.tensor([0.5, 0.5, 0], dtype=torch.float64))


def _errors(sampler: str, strides: list[int]) -> list[float]:
    """RMS error at t = 0 against the exact ODE, from x at t = 960, in steps of `stride` timesteps."""
    net, x = _mixture(), _x()
    exact = probability_flow(net, x, SCHEDULE.alpha_bar[960].item(), SCHEDULE.alpha_bar[0].item(), 400)
    return [
        (denoise(net, x, SCHEDULE, range(960, -1, -k), sampler=sampler) - exact).pow(2).mean().sqrt().item()
        for k in strides
    ]


def test_solvers_converge_to_the_exact_ode_at_their_order():
    """S = 40, 80, 160, 320 equal steps of the 960 → 0 ODE. DDIM (Euler) is first order.
    DPM-Solver++(2M) is second order: its error ratio per halving tends to 4 (measured 3.1, 3.6,
    3.9; asserted ≥ 3.2 on the last two). UniPC's corrector raises the order: measured ratios
    3.2, 4.1, 4.8, still rising (5.6 at S = 960) towards third order's 8; asserted rising, past 4.4
    at the end, and 1.3× more accurate than DPM-Solver++ at S = 320 (measured 1.5×). PLMS's
    order is limited by its first-order first step and by steps equal in t rather than in the
    ODE's variable: measured ratios 7.2, 2.4, 2.9; asserted ≥ 2 (at least first order), and
    ≥ 10× more accurate than DDIM at every S."""
    strides = [24, 12, 6, 3]
    errors = {s: _errors(s, strides) for s in ["ddim", *SOLVERS]}
    ratios = {s: [a / b for a, b in pairwise(e)] for s, e in errors.items()}
    assert all(1.8 < r < 2.2 for r in ratios["ddim"]), ratios
    assert all(3.2 < r < 4.8 for r in ratios["dpm-solver++"][1:]), ratios
    assert ratios["unipc"] == sorted(ratios["unipc"]), ratios
    assert ratios["unipc"][-1] > 4.4, ratios
    assert errors["unipc"][-1] < errors["dpm-solver++"][-1] / 1.3, errors
    assert all(r > 2 for r in ratios["plms"]), ratios
    assert all(p < d / 10 for p, d in zip(errors["plms"], errors["ddim"], strict=True)), errors
    assert errors["dpm-solver++"][-1] < errors["ddim"][-1] / 4, errors


def test_every_sampler_reaches_the_ddim_result_with_every_timestep():
    """At S = T through `ddim.sample` (float32), all four are discretizations of one ODE: each
    solver is nearer the exact solution than DDIM is, so it agrees with DDIM to DDIM's own error."""
    net, x_T = _mixture(), _x(256).float()
    exact = probability_flow(net, x_T, SCHEDULE.alpha_bar[-1].item(), 1.0, 400)
    run = {
        s: ddim.sample(net, noise=x_T, schedule=SCHEDULE, steps=1000, sampler=s) for s in ["ddim", *SOLVERS]
    }
    rms = lambda a, b: (a.double() - b.double()).pow(2).mean().sqrt().item()  # noqa: E731
    ddim_error = rms(run["ddim"], exact)
    assert ddim_error < 2e-3  # first order: ~0.004 at S = 320 (above), here 1000 steps
    for s in SOLVERS:
        assert rms(run[s], exact) < ddim_error / 3, s
        assert rms(run[s], run["ddim"]) < 1.5 * ddim_error, s


def test_dpm_solver_matches_diffusers():
    """diffusers' DPMSolverMultistepScheduler (solver_order=2, "dpmsolver++", midpoint) with our
    timesteps, lower_order_final and final_sigmas_type="zero" (its last step, to σ = 0, is first
    order like ours). diffusers keeps σ and the sample in float32: agreement to 1e-4."""
    pytest.importorskip("diffusers")
    net, x = _mixture(), _x(32)
    for ts in ([999, 800, 600, 400, 200, 0], [999, 900, 700, 500, 200, 100, 50, 20]):
        y = diffusers_dpm_solver(net, x, ts, solver_order=2, solver_type="midpoint", lower_order_final=True)
        ours = denoise(net, x, SCHEDULE, [*ts, -1], sampler="dpm-solver++")
        torch.testing.assert_close(ours, y.double(), rtol=0, atol=1e-4)
        assert (ours - denoise(net, x, SCHEDULE, [*ts, -1])).abs().max() > 0.05  # not DDIM's result


def test_unipc_matches_diffusers():
    """diffusers' UniPCMultistepScheduler (solver_order=2, bh2, predict_x0, lower_order_final,
    final_sigmas_type="zero") with its own timesteps, which ours then follow. float32 there:
    agreement to 1e-5 (measured 3e-7–5e-7); the corrector moves the result by ~0.01 from
    DPM-Solver++(2M), which is UniPC's predictor alone."""
    diffusers = pytest.importorskip("diffusers")
    net, x = _mixture(), _x(32)
    for steps, spacing in ((5, "linspace"), (8, "trailing"), (20, "linspace")):
        scheduler = diffusers.UniPCMultistepScheduler(
            num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", solver_order=2,
            solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
            prediction_type="epsilon", timestep_spacing=spacing,
        )  # fmt: skip
        scheduler.set_timesteps(steps)
        y = x.float()
        for t in scheduler.timesteps:
            y = scheduler.step(net(y, torch.full((len(y),), int(t))), t, y).prev_sample
        ts = [*scheduler.timesteps.tolist(), -1]
        ours = denoise(net, x, SCHEDULE, ts, sampler="unipc")
        torch.testing.assert_close(ours, y.double(), rtol=0, atol=1e-5)
        assert (ours - denoise(net, x, SCHEDULE, ts, sampler="dpm-solver++")).abs().max() > 5e-3


@pytest.mark.parametrize("sampler", SOLVERS)
@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_parameterizations_give_the_same_samples(sampler, prediction):
    means = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    models = [
        Model(MixtureDenoiser(SCHEDULE, means, 0.1, prediction=p), SCHEDULE, (1, 4, 4), p)
        for p in ("eps", prediction)
    ]
    a, b = (ddim.sample(m, 16, steps=20, sampler=sampler, spacing="logsnr", seed=1) for m in models)
    torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


@pytest.mark.parametrize("sampler", SOLVERS)
def test_solvers_are_deterministic_per_seed_whatever_the_batch(tiny_model, sampler):
    full = ddim.sample(tiny_model, 5, steps=6, sampler=sampler, seed=3)
    assert torch.equal(full, ddim.sample(tiny_model, 5, steps=6, sampler=sampler, seed=3))
    assert not torch.allclose(full, ddim.sample(tiny_model, 5, steps=6, sampler=sampler, seed=4))
    assert not torch.allclose(full, ddim.sample(tiny_model, 5, steps=6, seed=3))  # not DDIM
    batched = ddim.sample(tiny_model, 5, steps=6, sampler=sampler, seed=3, batch_size=2)
    torch.testing.assert_close(batched, full, rtol=0, atol=1e-5 * full.abs().max().item())
    shard = ddim.sample(tiny_model, 2, steps=6, sampler=sampler, seed=3, start_index=3)
    torch.testing.assert_close(shard, full[3:], rtol=0, atol=1e-5 * full.abs().max().item())


@pytest.mark.parametrize("sampler", SOLVERS)
def test_trajectory_and_progress_callbacks(tiny_model, sampler):
    seen = []
    x, traj = ddim.sample(tiny_model, 3, steps=4, sampler=sampler, seed=0, return_trajectory=True,
                          on_step=seen.append)  # fmt: skip
    assert traj.xt.shape == (5, 3, 1, 8, 8)
    assert traj.x0.shape == (4, 3, 1, 8, 8)
    torch.testing.assert_close(traj.xt[-1], x)
    assert [s.index for s in seen] == [0, 1, 2, 3]
    torch.testing.assert_close(traj.x0[-1], x)  # the step to clean data is first order: the network's x̂_0


@pytest.mark.parametrize("sampler", SOLVERS)
def test_eta_zero_is_accepted_and_any_other_eta_refused(tiny_model, sampler):
    a = ddim.sample(tiny_model, 2, steps=4, sampler=sampler, seed=0)
    torch.testing.assert_close(a, ddim.sample(tiny_model, 2, steps=4, sampler=sampler, eta=0.0, seed=0))
    with pytest.raises(ValueError, match=re.escape(f"sampler '{sampler}' is a deterministic ODE solver")):
        ddim.sample(tiny_model, 2, steps=4, sampler=sampler, eta=0.5)
    with pytest.raises(ValueError, match=r"deterministic ODE solver \(η = 0\); eta=1.0"):
        denoise(lambda x, t: x, torch.zeros(1, 2), SCHEDULE, [10, 5, -1], sampler=sampler, eta=1.0)
    with pytest.raises(ValueError, match="ascending timestep sequence"):
        denoise(lambda x, t: x, torch.zeros(1, 2), SCHEDULE, [0, 5, 10], sampler=sampler)


def test_cli_offers_the_solvers_and_logsnr_and_refuses_eta(capsys, tiny_checkpoint, tmp_path):
    code, out, _ = run_cli(capsys, "sample", "--model", tiny_checkpoint, "--sampler", "plms",
                           "--spacing", "logsnr", "--steps", "5", "--dry-run")  # fmt: skip
    assert code == 0
    assert '"sampler": "plms"' in out
    assert '"timesteps": [\n    99,' in out  # logsnr starts at T − 1 (T = 100)
    code, _, err = run_cli(capsys, "sample", "--model", tiny_checkpoint, "--sampler", "dpm-solver++",
                           "--eta", "0.3", "--steps", "3", "--out", tmp_path / "x.png")  # fmt: skip
    assert code == 2
    assert err.strip().splitlines() == [
        "ddim sample: error: sampler 'dpm-solver++' is a deterministic ODE solver (η = 0); "
        "eta=0.3 is only for sampler 'ddim'"
    ]
    code, out, _ = run_cli(capsys, "sample", "--model", tiny_checkpoint, "--sampler", "dpm-solver++",
                           "--steps", "3", "--n", "2", "--out", tmp_path / "x.png", "--quiet")  # fmt: skip
    assert code == 0
    assert (tmp_path / "x.png").is_file()


def test_serve_requests_accept_the_solvers_without_eta():
    request = request_models(ddim.load("toy"), Limits()).sample
    assert request(sampler="plms").sampler == "plms"
    assert request(sampler="dpm-solver++", eta=0.0).eta == 0.0
    with pytest.raises(ValueError, match="deterministic ODE solver"):
        request(sampler="plms", eta=0.5)
