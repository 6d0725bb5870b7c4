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

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddim.guidance import Classes, conditioning, guided
from ddim.models import Model, num_classes
from ddim.sampling import (
    Precision,
    _check_options,
    _eval_mode,
    _resolve,
    _sub_sequence,
    denoise,
    sample,
)
from ddim.schedule import NoiseSchedule, Spacing

# Paper Table 2: reconstruction MSE per dimension, CIFAR-10 test set, η = 0, S steps each way.
PAPER_TABLE2: dict[int, float] = {10: 0.014, 20: 0.0065, 50: 0.0023, 100: 0.0009}
_RANGE_SLACK = 1e-4  # float round-off allowed beyond [-1, 1]


def upward_sequence(seq: Sequence[int] | Tensor) -> list[int]:
    """The inversion path for a descending sampling sub-sequence τ_S > … > τ_1: 0, τ_1, …, τ_S."""
    up = [int(t) for t in reversed(list(seq))]
    return up if up[0] == 0 else [0, *up]


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
    batch_size: int | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
    precision: Precision = "fp32",
    classes: Classes | None = None,
    guidance: float | None = None,
    channels_last: bool = False,
    compile: bool = False,
) -> Tensor:
    """The DDIM latents x_T of images x0 (N, *shape) in [-1, 1]: float32 (N, *shape) on the CPU.

    The η = 0 update (eq. 12) run upward over 0, τ_1, …, τ_S, ε̂ evaluated where each step
    starts. `steps`/`spacing`/`timesteps` name the sampling sub-sequence exactly as `sample`
    does; `sample(model, noise=x_T, ...)` with the same sub-sequence decodes the latents.
    classes, guidance: as in `sample`, for a class-conditional model (default: its null class).
    precision, channels_last, compile: how the network runs, as in `sample`.
    """
    check_images(x0, model)
    target = _resolve(model, x0, None, schedule, device, channels_last=channels_last, compile=compile)
    _check_options("ddim", 0.0, False, batch_size, precision)
    labels, w = conditioning(model, classes, guidance, x0.shape[0])
    path = upward_sequence(_sub_sequence(target.schedule, steps, spacing, timesteps))
    if len(path) == 1:  # S = 1 from t = 0: the latent is the image itself
        return x0.float().cpu().clone()
    batch_size = batch_size or x0.shape[0]
    bar = tqdm(total=x0.shape[0], disable=not progress, unit="img", desc=f"inverting (S={len(path) - 1})")
    net, schedule, prediction = target.call, target.schedule, target.prediction
    latents = []
    with torch.no_grad(), _eval_mode(target.net), bar:
        for start in range(0, x0.shape[0], batch_size):
            x = x0[start : start + batch_size].to(device=target.device, dtype=torch.float32)
            eps = net
            if labels is not None:
                eps = guided(net, labels[start : start + batch_size], w, num_classes(target.net))
            x = denoise(eps, x, schedule, path, prediction=prediction, precision=precision)  # (B, *shape)
            latents.append(x.float().cpu())
            bar.update(x.shape[0])
    return torch.cat(latents)


def reconstruct(
    model: Model | Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    *,
    steps: int | None = None,
    spacing: Spacing = "uniform",
    timesteps: Sequence[int] | Tensor | None = None,
    **options,
) -> Tensor:
    """decode(encode(x0)): invert, then sample with η = 0 over the same sub-sequence.

    `options` are those `invert` and `sample` share: schedule, batch_size, progress, device,
    precision, channels_last, compile.
    """
    x_T = invert(model, x0, steps=steps, spacing=spacing, timesteps=timesteps, **options)
    return sample(model, noise=x_T, steps=steps, spacing=spacing, timesteps=timesteps, eta=0.0, **options)


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
    **options,
) -> list[ReconstructionError]:
    """The paper's Table 2 for this model and these images: one row per S in `steps`.

    `options` go to `invert` and `sample` (schedule, batch_size, progress, device, and how the
    network runs: precision, channels_last, compile).
    """
    check_images(x0, model)
    schedule = model.schedule if isinstance(model, Model) else options.get("schedule")
    if schedule is None:
        raise ValueError("a plain callable model needs schedule= (a NoiseSchedule)")
    rows = []
    for S in steps:
        start = time.perf_counter()
        seq = _sub_sequence(schedule, S, spacing, None)
        x_hat = reconstruct(model, x0, timesteps=seq, **options)
        per_image = (x_hat - x0.float().cpu()).pow(2).flatten(1).mean(1)  # (N,)
        sem = per_image.std().item() / math.sqrt(len(per_image)) if len(per_image) > 1 else math.nan
        nfe = len(upward_sequence(seq)) - 1 + len(seq)
        seconds = time.perf_counter() - start
        rows.append(ReconstructionError(S, nfe, per_image.mean().item(), sem, seconds, x_hat[:keep]))
    return rows
