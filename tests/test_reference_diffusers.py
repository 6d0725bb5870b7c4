"""Reference equivalence with an independent implementation: diffusers 0.42.1.

diffusers' `DDIMScheduler` (Song et al. 2021, eqs. 12 and 16) and `DDPMScheduler` (Ho et al.
2020, eqs. 6-7, "fixed_small" variance) are configured to mean what ours means:
`clip_sample=False, set_alpha_to_one=True, steps_offset=0`, our "uniform" spacing = their
"leading" when S divides T, "trailing" = "trailing", "linspace" = "linspace".
Every comparison runs on the exact E[ε | x_t] of a Gaussian mixture (`ddim.toy`), so the
"network" is the same deterministic function on both sides.

Tolerances, and why:
- Timesteps are integers: equal exactly (trailing: up to one at an exact .5 tie, see there).
- float64 (diffusers' own update code, fed our float64 ᾱ, which `test_alpha_bar_matches_diffusers`
  checks against diffusers' ᾱ): the two sides differ only in the order of float64 operations.
  Measured ≤ 5.3e-13 over whole loops and ≤ 4.3e-13 for single steps on random inputs
  (where x̂_0 reaches O(500) at t = 999); tolerance 1e-10.
- float32, through the public `ddim.sample` against stock diffusers: diffusers rounds ᾱ_t to
  float32 (relative error ≤ 3.6e-7) and forms 1 − ᾱ_t in float32, which loses three digits
  near t = 0 (1 − ᾱ_0 = 1e-4); ours uses float64 ᾱ. One step from the same x_t to ᾱ' then
  differs by rounding divided by √ᾱ_t (up to 157× at t = 999) times √ᾱ', plus the 1 − ᾱ
  cancellation times |ε̂| (≤ 4): measured ≤ 4.8e-7·√(ᾱ'/ᾱ_t) + 2.4e-6 (20 seeds, every
  prediction type); tolerance 2e-6·√(ᾱ'/ᾱ_t) + 1e-5 (x̂_0 counts as ᾱ' = 1).
  A free-running loop from the same x_T: measured ≤ 7.5e-5 (a single step from t = 999; longer
  loops ≤ 3.5e-5, the mixture's sharp posterior near component boundaries amplifying
  rounding); tolerance 2e-4, on data of scale 1. A one-timestep offset (diffusers'
  steps_offset=1) moves the result by 4e-3 (S = 50) to 1.3e-2 (S = 10), and ending at ᾱ_0
  instead of 1 (set_alpha_to_one=False) by 9e-3: each 20× or more above the tolerance.
- η > 0 and DDPM loops get the same noise on both sides: our per-step noise function is fed
  diffusers' draws, or diffusers is handed our per-sample generators (documented in
  `sample_generator`: stream 1 is the step noise, one torch.randn(shape) per step).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

import ddim
from ddim.denoising import StepInfo, denoise
from ddim.models import Model
from ddim.models.parameterization import PREDICTIONS, to_x0_eps, v_from_x0_eps
from ddim.sampling import sample_generator
from ddim.schedule import NoiseSchedule, timesteps
from ddim.toy import MixtureDenoiser, glyphs
from ddim.update import ddim_step, sigma_eta
from helpers import PREDICTION_TYPE, run_diffusers

T = 1000
SCHEDULE = NoiseSchedule.linear(T, 1e-4, 0.02)
SPACING = {"uniform": "leading", "trailing": "trailing", "linspace": "linspace"}  # ours → diffusers'
STEP_NOISE_STREAM = 1  # `sample_generator`: "stream 0 draws x_T, stream 1 step noise"
SHAPE = (1, 8, 8)  # one sample: an 8×8 glyph

F64_ATOL = 1e-10
F32_LOOP_ATOL = 2e-4  # a whole loop (see the module docstring)

# (S, our spacing) whose loops diffusers runs correctly: its step() finds t' as t − T // S,
# which is the next timestep of its own sequence only for leading and trailing with S | T.
LOOPS = [
    (1, "uniform"),
    (1, "trailing"),
    (10, "uniform"),
    (50, "uniform"),
    (10, "trailing"),
    (100, "trailing"),
]


def ddim_scheduler(
    spacing: str = "leading", prediction: str = "eps", *, float64: bool = False
) -> DDIMScheduler:
    s = DDIMScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing=spacing,
        prediction_type=PREDICTION_TYPE[prediction],
    )  # fmt: skip
    if float64:  # diffusers' update rule on our float64 ᾱ (test_alpha_bar_matches_diffusers)
        s.alphas_cumprod = SCHEDULE.alpha_bar.clone()
        s.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return s


def ddpm_scheduler(prediction: str = "eps", *, float64: bool = False) -> DDPMScheduler:
    s = DDPMScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        variance_type="fixed_small", clip_sample=False, prediction_type=PREDICTION_TYPE[prediction],
    )  # fmt: skip
    if float64:
        s.alphas_cumprod = SCHEDULE.alpha_bar.clone()
        s.one = torch.tensor(1.0, dtype=torch.float64)
    return s


def mixture(prediction: str = "eps") -> MixtureDenoiser:
    """The exact denoiser of eight 8×8 glyphs with pixel noise 0.1 (data in about [-1.3, 1.3])."""
    return MixtureDenoiser(SCHEDULE, glyphs(SHAPE[-1]), 0.1, prediction=prediction)


def latents(n: int = 4, seed: int = 0) -> Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run_ours(net, x: Tensor, ts: list[int], **kwargs) -> tuple[Tensor, Tensor]:
    """`denoise` over ts in x's dtype: (x after each step, x̂_0 at each step)."""
    infos: list[StepInfo] = []
    denoise(net, x, SCHEDULE, ts, on_step=infos.append, **kwargs)
    return torch.stack([i.x for i in infos]), torch.stack([i.x0 for i in infos])


def f32_step_atol(alpha_bar: float, alpha_bar_next: float) -> float:
    """How far one float32 step from x_t may land from diffusers' (see the module docstring)."""
    return 2e-6 * (alpha_bar_next / alpha_bar) ** 0.5 + 1e-5


def diffusers_timesteps(num_timesteps: int, steps: int, spacing: str) -> np.ndarray:
    s = DDIMScheduler(num_train_timesteps=num_timesteps, steps_offset=0, timestep_spacing=spacing)
    s.set_timesteps(steps)
    return s.timesteps.numpy()


# --- the schedule ----------------------------------------------------------------------------


@pytest.mark.parametrize("num_timesteps", [1000, 100])
@pytest.mark.parametrize(("name", "ours_alpha_bar_rtol"), [("linear", 1e-6), ("cosine", 5e-5)])
def test_alpha_bar_matches_diffusers(num_timesteps, name, ours_alpha_bar_rtol):
    # diffusers builds β and ᾱ in float32: β agrees to float32 rounding (2 ulp). ᾱ is a float32
    # cumprod: linear (measured 3.6e-7) stays close; the cosine tail has β → 0.999, where 1 − β
    # keeps only a few float32 bits (measured 1.3e-5).
    if name == "linear":
        ours = NoiseSchedule.linear(num_timesteps, 1e-4, 0.02)
        theirs = DDIMScheduler(num_train_timesteps=num_timesteps, beta_schedule="linear")
    else:
        ours = NoiseSchedule.cosine(num_timesteps)
        theirs = DDIMScheduler(num_train_timesteps=num_timesteps, beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(theirs.betas.double(), ours.betas, rtol=2.5e-7, atol=0)
    torch.testing.assert_close(
        theirs.alphas_cumprod.double(), ours.alpha_bar, rtol=ours_alpha_bar_rtol, atol=0
    )


@pytest.mark.parametrize("t", [0, 1, 250, 999])
def test_q_sample_and_v_match_diffusers(t):
    g = torch.Generator().manual_seed(t)
    x0, noise = torch.randn(2, 3, *SHAPE, generator=g, dtype=torch.float64)
    tt = torch.full((3,), t, dtype=torch.int64)
    s = ddim_scheduler(float64=True)
    torch.testing.assert_close(
        SCHEDULE.q_sample(x0, tt, noise), s.add_noise(x0, noise, tt), rtol=0, atol=1e-14
    )
    a = SCHEDULE.alpha_bar_at(t).item()
    torch.testing.assert_close(v_from_x0_eps(x0, noise, a), s.get_velocity(x0, noise, tt), rtol=0, atol=1e-14)


# --- timestep sub-sequences --------------------------------------------------------------------

DIVISORS = [(n, s) for n in (1000, 100) for s in range(1, n + 1) if n % s == 0]


@pytest.mark.parametrize(("num_timesteps", "steps"), DIVISORS)
@pytest.mark.parametrize("spacing", ["uniform", "trailing", "linspace"])
def test_timesteps_match_diffusers_when_steps_divide(num_timesteps, steps, spacing):
    theirs = diffusers_timesteps(num_timesteps, steps, SPACING[spacing])
    np.testing.assert_array_equal(timesteps(num_timesteps, steps, spacing).numpy(), theirs)


@pytest.mark.parametrize("num_timesteps", [1000, 100, 999])
def test_linspace_matches_diffusers_for_every_step_count(num_timesteps):
    for steps in range(1, num_timesteps + 1):
        theirs = diffusers_timesteps(num_timesteps, steps, "linspace")
        np.testing.assert_array_equal(timesteps(num_timesteps, steps, "linspace").numpy(), theirs, str(steps))


@pytest.mark.parametrize("num_timesteps", [1000, 100, 999])
def test_trailing_matches_diffusers_for_every_step_count(num_timesteps):
    # diffusers accumulates np.arange(T, 0, −T/S); we compute T − i·T/S. Both round half to even
    # in float64, so they can round an exact .5 (T·(S − i)/S = k + 1/2) either way; elsewhere
    # they must agree. Where diffusers' arange overshoots (S + 1 values ending at −1, e.g.
    # T = 1000, S = 61) its sequence is invalid and not compared.
    compared = 0
    for steps in range(1, num_timesteps + 1):
        theirs = diffusers_timesteps(num_timesteps, steps, "trailing")
        if len(theirs) != steps or theirs.min() < 0:
            continue
        ours = timesteps(num_timesteps, steps, "trailing").numpy()
        assert len(ours) == steps
        exact_twice = 2 * num_timesteps * (steps - np.arange(steps))  # 2·T·(S − i), over S
        tie = (exact_twice % steps == 0) & (exact_twice // steps % 2 == 1)
        np.testing.assert_array_equal(ours[~tie], theirs[~tie], str(steps))
        assert np.abs(ours[tie] - theirs[tie]).max(initial=0) <= 1, steps
        compared += 1
    assert compared >= 0.9 * num_timesteps  # the sweep cannot pass by skipping everything


# --- η = 0: whole deterministic loops ----------------------------------------------------------


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize(("steps", "spacing"), LOOPS)
def test_eta0_loop_matches_diffusers_in_float64(prediction, steps, spacing):
    net, x = mixture(prediction), latents()
    ts, xs, x0s = run_diffusers(ddim_scheduler(SPACING[spacing], prediction, float64=True), net, x, steps)
    ours = timesteps(T, steps, spacing)
    torch.testing.assert_close(ours, ts)
    our_xs, our_x0s = run_ours(net, x, [*ours.tolist(), -1], prediction=prediction)
    torch.testing.assert_close(our_x0s, x0s, rtol=0, atol=F64_ATOL)
    torch.testing.assert_close(our_xs, xs, rtol=0, atol=F64_ATOL)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize(("steps", "spacing"), LOOPS)
def test_sample_matches_diffusers_in_float32(prediction, steps, spacing):
    # the public API: a plain eps_fn with schedule=, or a Model for x0 and v predictions
    net, noise = mixture(prediction), latents()
    if prediction == "eps":
        out, traj = ddim.sample(net, noise=noise, schedule=SCHEDULE, steps=steps, spacing=spacing,
                                eta=0.0, return_trajectory=True)  # fmt: skip
    else:
        model = Model(net, SCHEDULE, SHAPE, prediction)
        out, traj = ddim.sample(model, noise=noise, steps=steps, spacing=spacing, return_trajectory=True)
    assert out.dtype == traj.xt.dtype == torch.float32

    # each step of ours, redone by diffusers from the same x_t
    s = ddim_scheduler(SPACING[spacing], prediction)
    s.set_timesteps(steps)
    torch.testing.assert_close(traj.timesteps[:-1], s.timesteps)
    for k, t in enumerate(s.timesteps):
        x = traj.xt[k]
        step = s.step(net(x, torch.full((x.shape[0],), int(t), dtype=torch.int64)), t, x)
        a_t, a_next = (SCHEDULE.alpha_bar_at(u).item() for u in traj.timesteps[k : k + 2])
        atol = f32_step_atol(a_t, 1.0)  # x̂_0 is where the step would land at ᾱ' = 1
        torch.testing.assert_close(traj.x0[k], step.pred_original_sample, rtol=0, atol=atol)
        torch.testing.assert_close(traj.xt[k + 1], step.prev_sample, rtol=0, atol=f32_step_atol(a_t, a_next))

    # and diffusers' free-running loop from the same x_T
    _, xs, _ = run_diffusers(ddim_scheduler(SPACING[spacing], prediction), net, noise.float(), steps)
    torch.testing.assert_close(out, xs[-1], rtol=0, atol=F32_LOOP_ATOL)


# --- η > 0 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("eta", [0.2, 0.5, 1.0])
@pytest.mark.parametrize(
    ("steps", "t"),
    [(10, 900), (10, 500), (50, 20), (50, 0), (100, 999), (100, 5), (1000, 0), (1000, 1), (1000, 998)],
)
def test_ddim_step_matches_diffusers_step(prediction, eta, steps, t):
    s = ddim_scheduler(prediction=prediction, float64=True)
    s.set_timesteps(steps)
    t_next = max(t - T // steps, -1)  # diffusers' previous timestep; below 0 is "clean" (ᾱ = 1)
    g = torch.Generator().manual_seed(1000 * t + steps)
    output, x, z = torch.randn(3, 3, *SHAPE, generator=g, dtype=torch.float64)
    theirs = s.step(output, torch.tensor(t), x, eta=eta, variance_noise=z)

    a_t, a_next = SCHEDULE.alpha_bar_at(t).item(), SCHEDULE.alpha_bar_at(t_next).item()
    x0, eps = to_x0_eps(output, x, a_t, prediction)
    ours = ddim_step(x0, eps, a_next, sigma_eta(a_t, a_next, eta), z)
    torch.testing.assert_close(x0, theirs.pred_original_sample, rtol=0, atol=F64_ATOL)
    torch.testing.assert_close(ours, theirs.prev_sample, rtol=0, atol=F64_ATOL)
    if t_next >= 0:  # σ² is diffusers' _get_variance (eq. 16 at η = 1, times η²)
        assert sigma_eta(a_t, a_next, eta) ** 2 == pytest.approx(eta**2 * s._get_variance(t, t_next).item())


@pytest.mark.parametrize("eta", [0.2, 0.5, 1.0])
@pytest.mark.parametrize(("steps", "spacing"), [(10, "uniform"), (50, "uniform"), (10, "trailing")])
def test_eta_loop_matches_diffusers_in_float64(eta, steps, spacing):
    # both loops are fed the same noise, one tensor per step; neither draws any on the last
    # step (σ = 0 when ᾱ_t' = 1), so the k-th draw belongs to the k-th step on both sides
    net, x = mixture(), latents()
    noise = torch.randn(steps, *x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    s = ddim_scheduler(SPACING[spacing], float64=True)
    _, xs, x0s = run_diffusers(s, net, x, steps, eta=eta, variance_noise=noise)
    draws = iter(noise)
    ts = [*timesteps(T, steps, spacing).tolist(), -1]
    our_xs, our_x0s = run_ours(net, x, ts, eta=eta, step_noise=lambda: next(draws))
    assert len(list(draws)) == 1  # we drew S − 1 tensors
    torch.testing.assert_close(our_x0s, x0s, rtol=0, atol=F64_ATOL)
    torch.testing.assert_close(our_xs, xs, rtol=0, atol=F64_ATOL)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_sample_with_eta_matches_diffusers_given_our_generators(eta):
    # `ddim.sample` draws sample i's step noise from sample_generator(seed, i, 1), one
    # torch.randn(shape) per step; diffusers' randn_tensor draws the same from a generator list
    seed, steps, noise = 3, 10, latents(3, seed=1)
    out = ddim.sample(mixture(), noise=noise, schedule=SCHEDULE, steps=steps, eta=eta, seed=seed)
    gens = [sample_generator(seed, i, STEP_NOISE_STREAM) for i in range(len(noise))]
    _, xs, _ = run_diffusers(ddim_scheduler(), mixture(), noise.float(), steps, eta=eta, generator=gens)
    torch.testing.assert_close(out, xs[-1], rtol=0, atol=F32_LOOP_ATOL)


# --- DDPM ancestral sampling (η = 1 over all T steps) against DDPMScheduler ------------------------


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("t", [999, 500, 10, 1, 0])
def test_ddpm_step_matches_diffusers_ddpm_step(prediction, t):
    s = ddpm_scheduler(prediction, float64=True)
    g = torch.Generator().manual_seed(t)
    output, x = torch.randn(2, 3, *SHAPE, generator=g, dtype=torch.float64)
    theirs = s.step(output, t, x, generator=torch.Generator().manual_seed(99)).prev_sample
    z = randn_tensor(x.shape, generator=torch.Generator().manual_seed(99), dtype=x.dtype)  # its draw

    a_t, a_prev = SCHEDULE.alpha_bar_at(t).item(), SCHEDULE.alpha_bar_at(t - 1).item()
    x0, eps = to_x0_eps(output, x, a_t, prediction)
    sigma = sigma_eta(a_t, a_prev, 1.0)  # √β̃_t, the posterior std (DDPM eq. 7)
    torch.testing.assert_close(ddim_step(x0, eps, a_prev, sigma, z), theirs, rtol=0, atol=F64_ATOL)
    if t > 0:
        assert sigma**2 == pytest.approx(s._get_variance(t).item(), rel=1e-12)
    else:
        assert sigma == 0  # the last step adds no noise on either side


def test_ddpm_loop_matches_diffusers_in_float64():
    net, x = mixture(), latents(2)
    _, xs, x0s = run_diffusers(
        ddpm_scheduler(float64=True), net, x, None, generator=torch.Generator().manual_seed(5)
    )
    g = torch.Generator().manual_seed(5)
    our_xs, our_x0s = run_ours(
        net, x, list(range(T - 1, -2, -1)), sampler="ddpm",
        step_noise=lambda: randn_tensor(x.shape, generator=g, dtype=x.dtype),
    )  # fmt: skip
    torch.testing.assert_close(our_x0s, x0s, rtol=0, atol=F64_ATOL)
    torch.testing.assert_close(our_xs, xs, rtol=0, atol=F64_ATOL)


def test_sample_ddpm_matches_diffusers_given_our_generators():
    seed, noise = 4, latents(2, seed=2)
    out = ddim.sample(mixture(), noise=noise, schedule=SCHEDULE, sampler="ddpm", steps=T, seed=seed)
    gens = [sample_generator(seed, i, STEP_NOISE_STREAM) for i in range(len(noise))]
    _, xs, _ = run_diffusers(ddpm_scheduler(), mixture(), noise.float(), None, generator=gens)
    torch.testing.assert_close(out, xs[-1], rtol=0, atol=F32_LOOP_ATOL)
