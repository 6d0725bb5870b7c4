"""The samplers, as entries of one registry.

A sampler is DDIM's update (eq. 12, `ddim.denoising.denoise`) with three choices made: the
(x̂_0, ε̂) it feeds the step (`predict`: the latest network output, or an extrapolation from the
last few), an optional `correct`ion of the state once the next evaluation is in (UniPC), and the
σ of the mean and the std of the added noise (`sigmas`). Each module of this package declares
its entries in a tuple `ENTRIES`; every list of sampler names (the CLI's choices, the server's
schema, the evaluation sweeps, the docs) is read from `names()`. Adding a sampler is adding one
module here.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from torch import Tensor

from ddim.schedule import NoiseSchedule
from ddim.update import Evaluation, sigma_eta

# predict(schedule, history, x, t_next) → (x̂_0, ε̂) for eq. 12 from x at history[-1].t to t_next
Predictor = Callable[[NoiseSchedule, Sequence[Evaluation], Tensor, int], tuple[Tensor, Tensor]]
# correct(schedule, history, x_prev, x) → x redone once history[-1] (made at x) is known
Corrector = Callable[[NoiseSchedule, Sequence[Evaluation], Tensor, Tensor], Tensor]
# sigmas(eta, ᾱ_t, ᾱ_t', last) → (σ in the mean of eq. 12, std of the added noise)
Sigmas = Callable[[float, float, float, bool], tuple[float, float]]


def eta_sigmas(eta: float, a_t: float, a_next: float, last: bool) -> tuple[float, float]:
    """σ(η) of eq. 16, in the mean and on the noise alike."""
    sigma = sigma_eta(a_t, a_next, eta)
    return sigma, sigma


def latest(
    schedule: NoiseSchedule, history: Sequence[Evaluation], x: Tensor, t_next: int
) -> tuple[Tensor, Tensor]:
    """The last evaluation as it is (first order: DDIM)."""
    return history[-1].x0, history[-1].eps


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler: how eq. 12 is fed, what η it allows, what a step costs."""

    name: str
    summary: str  # one line, for --help and docs
    rank: int  # position in every list of samplers
    eta: float | None = None  # None: any η in [0, 1] (default 0); else the η it fixes
    eta_label: str | None = None  # how a fixed η is shown, where its number says too little (σ̂)
    clip: bool = False  # whether x̂_0 is clamped to [-1, 1] by default
    history: int = 1  # network evaluations the predictor and corrector read, latest included
    nfe_per_step: int = 1
    predict: Predictor = latest
    correct: Corrector | None = None
    sigmas: Sigmas = eta_sigmas

    @property
    def fixed_eta(self) -> str | None:
        """The η this sampler fixes, as shown to users ("0", "1", "σ̂"); None: it takes any η."""
        return None if self.eta is None else self.eta_label or f"{self.eta:g}"

    @property
    def ode(self) -> bool:
        """A deterministic ODE solver (η fixed at 0)."""
        return self.eta == 0.0

    def check_eta(self, eta: float | None) -> float:
        """The η this sampler runs with, given the one asked for (None: the default)."""
        if self.eta is None:
            return float(eta or 0.0)
        if eta is not None and eta != self.eta:
            kind = "is a deterministic ODE solver (η = 0)" if self.ode else "fixes η = 1"
            takers = " or ".join(repr(n) for n in free_eta())
            raise ValueError(f"sampler {self.name!r} {kind}; eta={eta} is only for sampler {takers}")
        return self.eta


@cache
def registry() -> dict[str, SamplerSpec]:
    """Every sampler of the package, by name, in rank order."""
    found: list[SamplerSpec] = []
    for module in pkgutil.iter_modules(__path__):
        found += importlib.import_module(f"{__name__}.{module.name}").ENTRIES
    return {spec.name: spec for spec in sorted(found, key=lambda s: s.rank)}


def names() -> tuple[str, ...]:
    return tuple(registry())


def free_eta() -> tuple[str, ...]:
    """The samplers that take any η in [0, 1]."""
    return tuple(s.name for s in registry().values() if s.eta is None)


def ode_solvers() -> tuple[str, ...]:
    """The deterministic higher-order solvers (η = 0, more than the latest evaluation)."""
    return tuple(s.name for s in registry().values() if s.ode)


def get(name: str) -> SamplerSpec:
    """The sampler called `name`; an unknown name is refused, listing the known ones."""
    spec = registry().get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(names())}")
    return spec


def check_eta(sampler: str, eta: float | None) -> float:
    """The η `sampler` runs with, given the one asked for (None: the default). "ddim" takes any
    η (default 0); "ddpm" and "ddpm-large" fix η = 1, the ODE solvers η = 0: another is refused."""
    return get(sampler).check_eta(eta)
