"""The server's jobs: sample (with previews), interpolate and invert, each a function of the
model, its parameters and a cancel event, run on the job thread (see `jobs`)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

import ddim
from ddim.denoising import StepInfo
from ddim.execution import Execution
from ddim.models import Model
from ddim.plan import resolve, sub_sequence
from ddim.sampling import run, target
from ddim.schedule import Spacing
from ddim.serve.images import data_url, png_bytes
from ddim.serve.jobs import check_cancelled

PREVIEWS = 20  # previews streamed per sampling run, at most
Emit = Callable[[str, dict], None]  # (event name, JSON-able data), called on the job thread


@dataclass(frozen=True)
class Result:
    """What a job made: PNG images, how many steps it took, and how long."""

    pngs: list[bytes]
    steps: int
    seconds: float
    mse: float | None = None  # inversion only: per-dimension reconstruction error on [-1, 1]


EXECUTION = Execution()  # the server runs the network as loaded: fp32, on the model's device


def _cancel_hook(cancel: threading.Event) -> Callable[[StepInfo], None]:
    return lambda _: check_cancelled(cancel)


def run_sample(
    model: Model,
    cancel: threading.Event,
    *,
    n: int,
    steps: int,
    eta: float | None,
    sampler: str,
    spacing: Spacing,
    seed: int,
    nrow: int | None = None,
    classes: list[int] | None = None,
    guidance: float | None = None,
    emit: Emit | None = None,
) -> Result:
    """`ddim.sample`, emitting a "step" event with x̂_0 and x_t grids every few steps.
    classes: one label per image or None (unconditional); guidance: w (default 1 with classes)."""
    plan = resolve(
        model, n, steps=steps, spacing=spacing, sampler=sampler, eta=eta, seed=seed, classes=classes,
        guidance=guidance,
    )  # fmt: skip
    every = max(1, math.ceil(plan.steps / PREVIEWS))
    start = time.perf_counter()

    def on_step(info: StepInfo) -> None:
        check_cancelled(cancel)
        done = info.index + 1
        if emit is not None and done % every == 0 and done < plan.steps:
            emit("step", {
                "step": done, "steps": plan.steps, "t": info.t, "seconds": time.perf_counter() - start,
                "x0": data_url(png_bytes(info.x0, nrow)), "xt": data_url(png_bytes(info.x, nrow)),
            })  # fmt: skip

    x = run(target(model, EXECUTION), plan, EXECUTION, n, on_step=on_step)
    return Result([png_bytes(x, nrow)], plan.steps, time.perf_counter() - start)


def run_interpolation(
    model: Model,
    cancel: threading.Event,
    *,
    seed_a: int,
    seed_b: int,
    frames: int,
    steps: int,
    spacing: Spacing,
    classes: list[int] | None = None,
    guidance: float | None = None,
) -> Result:
    """`frames` images along the slerp between the latents of seeds a and b, decoded with η = 0,
    all with the same class and guidance (classes: one label, or None: unconditional).

    The ends are the first image that `sample(seed=seed_a)` and `sample(seed=seed_b)` give at η = 0.
    """
    seq = sub_sequence(model.schedule, steps, spacing)
    start = time.perf_counter()
    z0, z1 = (ddim.seeded_latents(model.image_shape, seed, [0])[0] for seed in (seed_a, seed_b))
    path = ddim.slerp(z0, z1, torch.linspace(0, 1, frames, dtype=torch.float64))  # (frames, C, H, W)
    x = ddim.sample(
        model, noise=path, timesteps=seq, eta=0.0, on_step=_cancel_hook(cancel),
        classes=classes, guidance=guidance,
    )  # fmt: skip
    return Result([png_bytes(frame[None]) for frame in x], len(seq), time.perf_counter() - start)


def run_inversion(
    model: Model, cancel: threading.Event, *, x0: Tensor, steps: int, spacing: Spacing
) -> Result:
    """Invert x0 (1, C, H, W) to x_T and decode it again with η = 0; the PNGs are x0 and the
    reconstruction, and `mse` their per-dimension squared error (the paper's Table 2 measure)."""
    seq = sub_sequence(model.schedule, steps, spacing)
    start = time.perf_counter()
    x_T = ddim.invert(model, x0, timesteps=seq)
    check_cancelled(cancel)
    x_hat = ddim.sample(model, noise=x_T, timesteps=seq, eta=0.0, on_step=_cancel_hook(cancel))
    mse = (x_hat - x0).pow(2).mean().item()
    return Result([png_bytes(x0), png_bytes(x_hat)], len(seq), time.perf_counter() - start, mse)
