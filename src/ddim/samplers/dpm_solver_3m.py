"""DPM-Solver++(3M) (Lu et al. 2022, arXiv 2211.01095, the third-order multistep data-prediction
solver; diffusers' DPMSolverMultistepScheduler with solver_order=3).

With λ = log(α/σ) and a step s_0 → t of size h after steps of sizes h_0 = λ_{s_0} − λ_{s_1}
and h_1 = λ_{s_1} − λ_{s_2} (r_0 = h_0/h, r_1 = h_1/h), from the last three x̂_0 (m_0 latest):

    D1_0 = (m_0 − m_1)/r_0,   D1_1 = (m_1 − m_2)/r_1,
    D1 = D1_0 + r_0/(r_0 + r_1) (D1_0 − D1_1),   D2 = (D1_0 − D1_1)/(r_0 + r_1),
    x_t = (σ_t/σ_{s_0}) x_{s_0} − α_t (e^{−h} − 1) m_0 + α_t ((e^{−h} − 1)/h + 1) D1
          − α_t ((e^{−h} − 1 + h)/h² − 1/2) D2.

That is DDIM's transfer (eq. 12 at η = 0) with x̂_0 → D = m_0 − c_1 D1 + c_2 D2,
c_1 = ((e^{−h} − 1)/h + 1)/(e^{−h} − 1), c_2 = ((e^{−h} − 1 + h)/h² − 1/2)/(e^{−h} − 1).
The first step is first order, the second DPM-Solver++(2M), and the step to clean data first
order (λ = ∞), as for the 2M solver. One network evaluation per step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from ddim.models.parameterization import eps_from_x0
from ddim.samplers import SamplerSpec
from ddim.schedule import NoiseSchedule
from ddim.solvers import dpm_solver_2m, half_log_snr
from ddim.update import Evaluation


def dpm_solver_3m(
    schedule: NoiseSchedule, history: Sequence[Evaluation], x: Tensor, t_next: int
) -> tuple[Tensor, Tensor]:
    """(D, ε̂ consistent with it) for eq. 12: third order once three evaluations are in."""
    if len(history) < 3 or t_next == -1:
        return dpm_solver_2m(schedule, history, x, t_next)
    e2, e1, e0 = history[-3], history[-2], history[-1]
    lam_2, lam_1, lam_0, lam_t = (half_log_snr(schedule, t) for t in (e2.t, e1.t, e0.t, t_next))
    h, h_0, h_1 = lam_t - lam_0, lam_0 - lam_1, lam_1 - lam_2
    r_0, r_1 = h_0 / h, h_1 / h
    d1_0, d1_1 = (e0.x0 - e1.x0) / r_0, (e1.x0 - e2.x0) / r_1
    d1 = d1_0 + r_0 / (r_0 + r_1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r_0 + r_1)
    b = math.expm1(-h)
    x0 = e0.x0 - (b / h + 1) / b * d1 + ((b + h) / h**2 - 0.5) / b * d2
    return x0, eps_from_x0(x, x0, schedule.alpha_bar_at(e0.t).item())


ENTRIES = (
    SamplerSpec(
        "dpm-solver++3m", "DPM-Solver++(3M), third-order ODE solver", rank=35, eta=0.0, history=3,
        predict=dpm_solver_3m,
    ),
)  # fmt: skip
