"""DDIM (any η) and the two DDPM samplers: eq. 12 fed the latest network output.

"ddpm" is η = 1 (DDPM's ancestral sampler with every timestep). "ddpm-large" is the paper's σ̂
(Table 1, the official `ddpm_noisy`): the η = 1 mean with noise of variance β̂ = 1 − ᾱ_t/ᾱ_t'
instead, x̂_0 clipped, and no noise on the last step.
"""

from __future__ import annotations

import math

from ddim.samplers import SamplerSpec
from ddim.update import sigma_eta


def _sigma_hat(eta: float, a_t: float, a_next: float, last: bool) -> tuple[float, float]:
    return sigma_eta(a_t, a_next, 1.0), 0.0 if last else math.sqrt(1 - a_t / a_next)


ENTRIES = (
    SamplerSpec("ddim", "DDIM, any η in [0, 1] (η = 0 deterministic)", rank=0),
    SamplerSpec("ddpm", "DDPM's ancestral sampler (η = 1)", rank=10, eta=1.0),
    SamplerSpec(
        "ddpm-large", "the paper's σ̂: η = 1 mean, noise of variance β̂, x̂0 clipped", rank=20, eta=1.0,
        eta_label="σ̂", clip=True, sigmas=_sigma_hat,
    ),
)  # fmt: skip
