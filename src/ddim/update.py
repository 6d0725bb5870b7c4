"""The generalized DDIM update (Song, Meng & Ermon, ICLR 2021, arXiv 2010.02502), one step.

From timestep t to the next timestep t' of a sub-sequence τ (eq. 12):

    x_t' = √ᾱ_t' x̂_0 + √(1 − ᾱ_t' − σ²) ε̂ + σ z,      x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t,
    σ(η) = η √((1 − ᾱ_t')/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_t')   (eq. 16).

η = 0 is the deterministic DDIM; η = 1 with every timestep is DDPM's ancestral sampler (its
mean and variance are the posterior q(x_t' | x_t, x̂_0)). Every sampler (`ddim.samplers`) is
this step fed its own (x̂_0, ε̂) and σ; `ddim.denoising.denoise` runs it over a sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor


def sigma_eta(alpha_bar_t: float, alpha_bar_next: float, eta: float) -> float:
    """σ of eq. 16; η = 1 gives the DDPM posterior standard deviation √β̃.

    η = 0 gives 0 for any pair, also upward (ᾱ_t' < ᾱ_t, where the root would be imaginary).
    """
    if eta == 0:
        return 0.0
    return eta * math.sqrt((1 - alpha_bar_next) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_next))


def ddim_step(
    x0: Tensor,
    eps: Tensor,
    alpha_bar_next: float | Tensor,
    sigma: float,
    z: Tensor | None = None,
    noise_std: float | None = None,
) -> Tensor:
    """Eq. 12: √ᾱ_t' x̂_0 + √(1 − ᾱ_t' − σ²) ε̂ + σ z. `noise_std` replaces σ on z only (σ̂).

    ᾱ_t' is a float, or a tensor that broadcasts against x̂_0 (one per sample, e.g. (B, 1, 1, 1)).
    """
    noise_std = sigma if noise_std is None else noise_std
    if isinstance(alpha_bar_next, Tensor):
        x = alpha_bar_next.sqrt() * x0 + (1 - alpha_bar_next - sigma**2).clamp(min=0).sqrt() * eps
    else:
        x = math.sqrt(alpha_bar_next) * x0 + math.sqrt(max(0.0, 1 - alpha_bar_next - sigma**2)) * eps
    return x if z is None or noise_std == 0 else x + noise_std * z


@dataclass(frozen=True)
class Evaluation:
    """One network evaluation at timestep t, as (x̂_0, ε̂), each (B, *shape)."""

    t: int
    x0: Tensor
    eps: Tensor
