"""The higher-order ODE solvers of `ddim.solvers`: η = 0, one network evaluation per step."""

from __future__ import annotations

from ddim.samplers import SamplerSpec
from ddim.solvers import ADAMS_BASHFORTH, dpm_solver_2m, plms, unipc_correct

ENTRIES = (
    SamplerSpec(
        "dpm-solver++", "DPM-Solver++(2M), second-order ODE solver", rank=30, eta=0.0, history=2,
        predict=dpm_solver_2m,
    ),
    SamplerSpec(
        "unipc", "UniPC (bh2), DPM-Solver++(2M) with a corrector", rank=40, eta=0.0, history=3,
        predict=dpm_solver_2m, correct=unipc_correct,
    ),
    SamplerSpec(
        "plms", "PLMS (PNDM's Adams–Bashforth), fourth-order ODE solver", rank=60, eta=0.0,
        history=len(ADAMS_BASHFORTH), predict=plms,
    ),
)  # fmt: skip
