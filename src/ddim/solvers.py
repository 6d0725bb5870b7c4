"""Higher-order multistep solvers of the DDIM ODE: DPM-Solver++(2M), UniPC and PLMS.

All are DDIM's η = 0 step (Song et al. 2021, eq. 12) fed a prediction extrapolated from the
network outputs of the last few steps instead of the latest one alone. So they run inside the
same loop as DDIM (`denoising.denoise`, sampler "dpm-solver++", "unipc" or "plms": entries of
`ddim.samplers`), one network
evaluation per step (NFE = S), with the same seeds, batching, devices, precision and callbacks.

DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Algorithm 2), in its data-prediction form.
With α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), λ_t = log(α_t/σ_t) at the integer timesteps, and a step
s → t of size h = λ_t − λ_s after a step of size h' = λ_s − λ_s' (r = h'/h):

    x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D,    D = (1 + 1/(2r)) x̂_0(s) − 1/(2r) x̂_0(s').

With D = x̂_0(s) this is exactly the DDIM step (DPM-Solver++1 is DDIM), so the 2M step is eq. 12
with x̂_0 → D and ε̂ → (x_s − α_s D)/σ_s. The first step has no history and is first order;
so is the last one to clean data (λ = ∞, so r = 0 and D is undefined: Lu et al.'s "lower order
final", diffusers' final_sigmas_type="zero"), which therefore returns the network's x̂_0.

UniPC (Zhao et al. 2023, arXiv 2302.04867), order 2 with B(h) = e^h − 1 ("bh2"), in its
data-prediction form, as its authors and diffusers run it. Its predictor UniP-2 (with their
ρ = 1/2) is exactly the DPM-Solver++(2M) step above. Its corrector UniC redoes the step s → t
once the network has been evaluated at the predicted x_t, which the next step needs anyway, so
it costs no evaluation: x_t is recomputed from x_s by the same transfer with

    D_c = x̂_0(s) + ρ_1 (x̂_0(s') − x̂_0(s))/r_1 + ρ_t (x̂_0(t) − x̂_0(s)),   r_1 = (λ_s' − λ_s)/h,

where (ρ_1, ρ_t) solve [[1, 1], [r_1, 1]] ρ = (g_1, 2 g_2)/B with B = e^{−h} − 1,
g_1 = B/(−h) − 1 and g_2 = g_1/(−h) − 1/2 (the paper's recursion of the φ functions, at −h in
the data-prediction form) — equivalently, the step integrates the quadratic through the three
x̂_0 in λ exactly; a step without an earlier evaluation s' (the first) is corrected by UniC-1,
D_c = (x̂_0(s) + x̂_0(t))/2. For equal steps and h → 0,
D_c → (5 x̂_0(t) + 8 x̂_0(s) − x̂_0(s'))/12, the Adams–Moulton corrector. The next step goes
on from the corrected x_t with the x̂_0(t) evaluated at the predicted one. The step to clean
data is first order (as for DPM-Solver++), so its result is the network's x̂_0 and is not
corrected. (A custom sequence that ends above clean data keeps order 2 on its last step, where
diffusers' lower_order_final would drop to 1.)

PLMS, the pseudo linear multistep method of PNDM (Liu et al. 2022, arXiv 2202.09778): the
4-step Adams–Bashforth combination of the last four ε̂, ε' = (55 ε̂_0 − 59 ε̂_1 + 37 ε̂_2 − 9 ε̂_3)/24
(ε̂_0 the latest), moved from x_t to t' by DDIM's transfer (eq. 12 with ε̂ = ε'). Its fixed
coefficients assume equally spaced steps. Warm-up: PNDM's first three steps are pseudo
Runge–Kutta steps of 4 network evaluations each (12 NFE for 3 steps); here they are the
lower-order Adams–Bashforth combinations instead — DDIM, (3 ε̂_0 − ε̂_1)/2,
(23 ε̂_0 − 16 ε̂_1 + 5 ε̂_2)/12 — so every step costs one evaluation and NFE = S, which is
what a budget of 5–20 evaluations needs (PNDM's warm-up alone would take 12). The last step
to clean data is first order, as for the other two solvers (it returns the network's x̂_0):
PNDM extrapolates ε̂ over it too, which the step from t = 0 of `uniform` spacing hides, but over
the long last step of `trailing` spacing (t = T/S − 1 → clean) it broke the shipped MNIST model's
samples — their black background came out grey (median −0.86 instead of −1; FID 625 at
NFE 10), though the network's own x̂_0 there was right (docs/samplers.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from ddim.models.parameterization import eps_from_x0, x0_from_eps
from ddim.schedule import NoiseSchedule
from ddim.update import Evaluation

# Adams–Bashforth coefficients of ε̂_0 (latest), ε̂_1, … for 1, 2, 3 and 4 past evaluations.
ADAMS_BASHFORTH: tuple[tuple[float, ...], ...] = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


def dpm_solver_2m(
    schedule: NoiseSchedule, history: Sequence[Evaluation], x: Tensor, t_next: int
) -> tuple[Tensor, Tensor]:
    """DPM-Solver++(2M)'s (D, ε̂ consistent with it) for eq. 12; first order on the first step
    and on the step to clean data."""
    now = history[-1]
    if len(history) < 2 or t_next == -1:
        return now.x0, now.eps
    x0 = dpm_solver_2m_data(schedule, history[-2], now, t_next)
    return x0, eps_from_x0(x, x0, schedule.alpha_bar_at(now.t).item())


def plms(
    schedule: NoiseSchedule, history: Sequence[Evaluation], x: Tensor, t_next: int
) -> tuple[Tensor, Tensor]:
    """PLMS's Adams–Bashforth ε' (and x̂_0 from it) for eq. 12; first order to clean data."""
    now = history[-1]
    if t_next == -1:
        return now.x0, now.eps
    eps = plms_eps(history)
    return x0_from_eps(x, eps, schedule.alpha_bar_at(now.t).item()), eps


def unipc_correct(
    schedule: NoiseSchedule, history: Sequence[Evaluation], x_prev: Tensor, x: Tensor
) -> Tensor:
    """UniPC's corrector: x, the state the last step reached at history[-1].t from x_prev at
    history[-2].t, recomputed by that step's transfer with D_c (module docstring). The first
    evaluation keeps x."""
    if len(history) < 2:
        return x
    prev, now = history[-2], history[-1]
    d = unic_data(schedule, history[-3] if len(history) > 2 else None, prev, now)
    a_prev, a_now = (schedule.alpha_bar_at(e.t).item() for e in (prev, now))
    return math.sqrt(a_now) * d + math.sqrt(1 - a_now) * eps_from_x0(x_prev, d, a_prev)


def unic_data(
    schedule: NoiseSchedule, earlier: Evaluation | None, prev: Evaluation, now: Evaluation
) -> Tensor:
    """D_c of UniC-2 over the step prev → now with the evaluation before it, UniC-1 without."""
    if earlier is None:
        return (prev.x0 + now.x0) / 2
    lam_earlier, lam_prev, lam_now = (half_log_snr(schedule, e.t) for e in (earlier, prev, now))
    h = lam_now - lam_prev
    r = (lam_earlier - lam_prev) / h  # < 0: the earlier evaluation lies behind
    big_b = math.expm1(-h)
    g_1 = big_b / -h - 1
    g_2 = g_1 / -h - 0.5
    b_1, b_2 = g_1 / big_b, 2 * g_2 / big_b
    rho_1 = (b_1 - b_2) / (1 - r)  # [[1, 1], [r, 1]] (ρ_1, ρ_t) = (b_1, b_2)
    rho_t = b_1 - rho_1
    return prev.x0 + rho_1 / r * (earlier.x0 - prev.x0) + rho_t * (now.x0 - prev.x0)


def half_log_snr(schedule: NoiseSchedule, t: int) -> float:
    """λ_t = log(√ᾱ_t / √(1 − ᾱ_t)) at a training timestep t ∈ [0, T − 1]."""
    return 0.5 * schedule.log_snr[t].item()


def dpm_solver_2m_data(schedule: NoiseSchedule, prev: Evaluation, now: Evaluation, t_next: int) -> Tensor:
    """D = (1 + 1/(2r)) x̂_0(now) − 1/(2r) x̂_0(prev), r = (λ_now − λ_prev)/(λ_next − λ_now)."""
    lam_prev, lam, lam_next = (half_log_snr(schedule, t) for t in (prev.t, now.t, t_next))
    r = (lam - lam_prev) / (lam_next - lam)
    return (1 + 1 / (2 * r)) * now.x0 - 1 / (2 * r) * prev.x0


def plms_eps(history: Sequence[Evaluation]) -> Tensor:
    """ε' = the Adams–Bashforth combination of the last (up to four) ε̂, latest first."""
    recent = list(history)[::-1][: len(ADAMS_BASHFORTH)]
    coefficients = ADAMS_BASHFORTH[len(recent) - 1]
    return sum(c * e.eps for c, e in zip(coefficients, recent, strict=True))
