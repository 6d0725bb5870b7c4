"""Latent interpolation (Song, Meng & Ermon 2021, §5.3 and Fig. 6).

With η = 0 the image is a deterministic function of x_T, so a path between two latents is a
path between two images. Latents are Gaussian, x_T ~ N(0, I) in D dimensions, so they lie near
the sphere of radius √D; linear interpolation would cut through its inside (at the midpoint of
two independent draws the norm is ≈ √(D/2)), where the model never saw a latent. Spherical
interpolation stays on it (the official code's `slerp`):

    slerp(z_0, z_1; w) = sin((1 − w) θ)/sin θ · z_0 + sin(w θ)/sin θ · z_1,
    θ = arccos(⟨z_0, z_1⟩ / (‖z_0‖ ‖z_1‖)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ddim.execution import Execution
from ddim.models import Model
from ddim.plan import resolve
from ddim.sampling import run, target
from ddim.schedule import NoiseSchedule, Spacing

_PARALLEL = 1e-6  # below this sin θ the great circle degenerates to the line between the points


def slerp(z0: Tensor, z1: Tensor, w: float | Sequence[float] | Tensor) -> Tensor:
    """Spherical interpolation of two latents of the same shape: one result per weight.

    w: a float (returns z0's shape) or K weights (returns (K, *z0.shape)); w = 0 gives z0 and
    w = 1 gives z1. The latents are treated as single vectors (all their dimensions at once).
    """
    if z0.shape != z1.shape:
        raise ValueError(f"latents must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    weights = torch.as_tensor(w, dtype=torch.float64)
    if weights.ndim > 1:
        raise ValueError(f"w must be a number or a 1-D sequence of numbers, got shape {tuple(weights.shape)}")
    a, b = z0.double().flatten(), z1.double().flatten()  # (D,)
    for name, z in (("z0", a), ("z1", b)):
        if not torch.isfinite(z).all():
            raise ValueError(f"{name} holds NaN or infinite values")
        if not z.any():  # ‖z‖ = 0: θ = arccos(0/0) is undefined
            raise ValueError(f"{name} is all zeros: a zero latent has no direction to interpolate along")
    cos = (a @ b / (a.norm() * b.norm())).clamp(-1, 1)
    theta = torch.arccos(cos)
    if torch.sin(theta) < _PARALLEL and cos < 0:
        raise ValueError("latents point in opposite directions: the great circle between them is not unique")
    w_col = weights.reshape(-1, 1)  # (K, 1)
    if torch.sin(theta) < _PARALLEL:  # (nearly) parallel: slerp → lerp
        out = (1 - w_col) * a + w_col * b
    else:
        out = (torch.sin((1 - w_col) * theta) * a + torch.sin(w_col * theta) * b) / torch.sin(theta)
    out = out.reshape(-1, *z0.shape).to(z0.dtype)  # (K, *shape)
    return out[0] if weights.ndim == 0 else out


def interpolate(
    model: Model | Callable[[Tensor, Tensor], Tensor],
    z0: Tensor,
    z1: Tensor,
    num: int = 11,
    steps: int | None = None,
    *,
    spacing: Spacing = "uniform",
    timesteps: Sequence[int] | Tensor | None = None,
    schedule: NoiseSchedule | None = None,
    progress: bool = False,
    execution: Execution | None = None,
) -> Tensor:
    """`num` images along the slerp from latent z0 to z1, decoded with DDIM η = 0:
    (num, *shape) float32 on the CPU; the ends decode z0 and z1.

    z0, z1: one latent each, (*shape); for a `Model`, (1, C, H, W) is accepted too.
    execution: how the network runs (device, precision, batch size, ...).
    """
    if not isinstance(num, int) or num < 2:
        raise ValueError(f"num must be an integer >= 2 (the two ends included), got {num!r}")
    if isinstance(model, Model):
        z0, z1 = (z[0] if z.ndim == 4 and z.shape[0] == 1 else z for z in (z0, z1))
    path = slerp(z0, z1, torch.linspace(0, 1, num, dtype=torch.float64))  # (num, *shape)
    execution = execution or Execution()
    goal = target(model, execution, noise=path, schedule=schedule)
    plan = resolve(model, num, schedule=goal.schedule, steps=steps, spacing=spacing, timesteps=timesteps,
                   eta=0.0, seed=0)  # fmt: skip
    return run(goal, plan, execution, num, noise=path, progress=progress)
