"""DDIM inversion (x_0 → x_T) and reconstruction (Song, Meng & Ermon 2021, §4.3 and §5.4).

With η = 0, eq. 12 is an Euler step of the ODE of eq. 14, dx̄ = ε_θ(x̄/√(σ² + 1)) dσ with
σ = √((1 − ᾱ)/ᾱ), x̄ = x/√ᾱ. Run upward over the reversed sub-sequence it encodes an image
into its latent x_T; decoding x_T with the same sub-sequence gives the image back, up to the
discretization error that Table 2 measures (per-dimension MSE on [-1, 1] data).

Each upward step t → t' is the same `ddim_step` as sampling, with ε̂ evaluated at t, where the
step starts (explicit Euler). The data are taken as x at t = 0 (ᾱ_0 = 1 − β_1 ≈ 1), so the
upward path is 0, τ_1, …, τ_S: S − 1 network evaluations for sequences that already start at
0 (uniform, quadratic, linspace), S for trailing ones (the extra step 0 → τ_1). Decoding
takes S more.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import torch
from torch import Tensor

from ddim.execution import Execution
from ddim.guidance import Classes
from ddim.models import Model
from ddim.plan import resolve, sub_sequence, upward_sequence
from ddim.sampling import check_n, run, target
from ddim.schedule import NoiseSchedule, Spacing

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

# Paper Table 2: reconstruction MSE per dimension, CIFAR-10 test set, η = 0, S steps each way.
PAPER_TABLE2: dict[int, float] = {10: 0.014, 20: 0.0065, 50: 0.0023, 100: 0.0009}
_RANGE_SLACK = 1e-4  # float round-off allowed beyond [-1, 1]


def check_images(x0: Tensor, model: Model | Callable) -> None:
    """Refuse images that are not float (N, *shape) in the model's data range [-1, 1].

    A plain callable has no declared data range or shape, so only the tensor itself is checked.
    """
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.ndim < 2 or x0.shape[0] == 0:
        got = f"{x0.dtype} {tuple(x0.shape)}" if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(
            f"images must be a float tensor (N, C, H, W) scaled to [-1, 1], got {got} "
            "(uint8 images: scale them with ddim.data.to_model_range)"
        )
    if not torch.isfinite(x0).all():
        raise ValueError("images hold NaN or infinite values")
    if not isinstance(model, Model):
        return
    if tuple(x0.shape[1:]) != model.image_shape:
        raise ValueError(
            f"images of shape {tuple(x0.shape[1:])} do not match the model's (C, H, W) = {model.image_shape}"
        )
    lo, hi = x0.min().item(), x0.max().item()
    if lo < -1 - _RANGE_SLACK or hi > 1 + _RANGE_SLACK:
        raise ValueError(
            f"images must be scaled to [-1, 1] (the model's data range), got values in [{lo:.4g}, {hi:.4g}]"
        )


def invert(
    model: Model | Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    *,
    steps: int | None = None,
    spacing: Spacing = "uniform",
    timesteps: Sequence[int] | Tensor | None = None,
    schedule: NoiseSchedule | None = None,
    classes: Classes | None = None,
    guidance: float | None = None,
    progress: bool = False,
    execution: Execution | None = None,
) -> Tensor:
    """The DDIM latents x_T of images x0 (N, *shape) in [-1, 1]: float32 (N, *shape) on the CPU.

    The η = 0 update (eq. 12) run upward over 0, τ_1, …, τ_S, ε̂ evaluated where each step
    starts (`SamplePlan.inverted`), through the same shell as `sample`. `steps`/`spacing`/
    `timesteps` name the sampling sub-sequence exactly as `sample` does; `sample(model,
    noise=x_T, ...)` with the same sub-sequence decodes the latents. classes, guidance: as in
    `sample`, for a class-conditional model (default: its null class). execution: how the
    network runs (device, precision, batch size, ...).
    """
    check_images(x0, model)
    execution = execution or Execution()
    goal = target(model, execution, noise=x0, schedule=schedule)
    plan = resolve(
        model, check_n(None, x0), schedule=goal.schedule, steps=steps, spacing=spacing,
        timesteps=timesteps, seed=0, classes=classes, guidance=guidance,
    ).inverted()  # fmt: skip
    if plan.steps == 0:  # S = 1 from t = 0: the latent is the image itself
        return x0.float().cpu().clone()
    return run(goal, plan, execution, x0.shape[0], noise=x0, progress=progress)


class InversionOptions(TypedDict, total=False):
    """The keywords of `invert`, which `reconstruct` takes too."""

    steps: int | None
    spacing: Spacing
    timesteps: Sequence[int] | Tensor | None
    schedule: NoiseSchedule | None  # a plain callable's
    classes: Classes | None
    guidance: float | None
    progress: bool
    execution: Execution | None


def reconstruct(
    model: Model | Callable[[Tensor, Tensor], Tensor], x0: Tensor, **options: Unpack[InversionOptions]
) -> Tensor:
    """decode(encode(x0)): `invert` with these keywords, then DDIM η = 0 down the same
    sub-sequence, with the same classes and guidance."""
    x_T = invert(model, x0, **options)  # which validates every keyword
    execution = options.get("execution") or Execution()
    goal = target(model, execution, noise=x_T, schedule=options.get("schedule"))
    plan = resolve(
        model, x_T.shape[0], schedule=goal.schedule, steps=options.get("steps"),
        spacing=options.get("spacing", "uniform"), timesteps=options.get("timesteps"), eta=0.0, seed=0,
        classes=options.get("classes"), guidance=options.get("guidance"),
    )  # fmt: skip
    return run(goal, plan, execution, x_T.shape[0], noise=x_T, progress=options.get("progress", False))


@dataclass(frozen=True)
class ReconstructionError:
    """One row of Table 2: how well S steps each way give the images back."""

    steps: int  # S, the length of the sampling sub-sequence
    evaluations: int  # network evaluations per image, inversion + decoding
    mse: float  # mean over images of the per-dimension squared error, on [-1, 1] data
    sem: float  # standard error of that mean over the images
    seconds: float  # wall time of the row
    examples: Tensor  # (keep, *shape) the first reconstructions, for pictures


def reconstruction_errors(
    model: Model | Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    steps: Sequence[int] = (10, 20, 50, 100),
    *,
    spacing: Spacing = "uniform",
    keep: int = 0,
    schedule: NoiseSchedule | None = None,
    progress: bool = False,
    execution: Execution | None = None,
) -> list[ReconstructionError]:
    """The paper's Table 2 for this model and these images: one row per S in `steps`."""
    check_images(x0, model)
    schedule = model.schedule if isinstance(model, Model) else schedule
    if schedule is None:
        raise ValueError("a plain callable model needs schedule= (a NoiseSchedule)")
    rows = []
    for S in steps:
        start = time.perf_counter()
        seq = sub_sequence(schedule, S, spacing, None)
        x_hat = reconstruct(
            model, x0, timesteps=seq, schedule=None if isinstance(model, Model) else schedule,
            progress=progress, execution=execution,
        )  # fmt: skip
        per_image = (x_hat - x0.float().cpu()).pow(2).flatten(1).mean(1)  # (N,)
        sem = per_image.std().item() / math.sqrt(len(per_image)) if len(per_image) > 1 else math.nan
        nfe = len(upward_sequence(seq)) - 1 + len(seq)
        seconds = time.perf_counter() - start
        rows.append(ReconstructionError(S, nfe, per_image.mean().item(), sem, seconds, x_hat[:keep]))
    return rows
