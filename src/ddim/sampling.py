"""The public sampling shell: models resolved to a `Target`, samples drawn in batches with
per-sample seeds, a plan (`ddim.plan`) run by `denoise` (`ddim.denoising`) under an `Execution`.

`sample` is the keyword front of DESIGN §2; `run` is what it and every other entry point
(`invert`, `interpolate`, `edit`, the streaming writer, the server) call with a resolved
`SamplePlan` and `Execution`. Randomness: sample i of a seed s draws its x_T from the generator
(s, i, 0) and its step noise from (s, i, 1), so it depends neither on n, the batch size, nor the
device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddim.denoising import StepInfo, denoise
from ddim.execution import Execution, Precision
from ddim.guidance import Classes, dynamic_thresholding, guided
from ddim.models import Model, num_classes
from ddim.models.parameterization import Prediction
from ddim.plan import SamplePlan, check_index, resolve
from ddim.rng import seeded_generator
from ddim.schedule import NoiseSchedule, Spacing

_LATENT_STREAM, _STEP_NOISE_STREAM = 0, 1  # two independent random streams per sample


def sample_generator(seed: int, index: int, stream: int) -> torch.Generator:
    """The CPU generator of sample `index` under `seed`: stream 0 draws x_T, stream 1 step noise."""
    return seeded_generator(seed, index, stream)


def seeded_latents(shape: Sequence[int], seed: int, indices: Sequence[int]) -> Tensor:
    """The x_T of samples `indices` under `seed`, (len(indices), *shape) float32 on the CPU:
    exactly what `sample(..., seed=seed)` starts sample i from."""
    gens = [sample_generator(seed, i, _LATENT_STREAM) for i in indices]
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in gens])


@dataclass(frozen=True)
class Trajectory:
    """Every state of a sampling run, on the CPU."""

    timesteps: Tensor  # (S + 1,) int64: τ_S … τ_1 and −1 (clean)
    xt: Tensor  # (S + 1, n, *shape): x_T, then x after each step (the last is the sample)
    x0: Tensor  # (S, n, *shape): x̂_0 predicted at each step


@dataclass(frozen=True)
class Target:
    """A model resolved to what the loop needs, its network moved to the device it runs on."""

    net: Callable[..., Tensor]  # the network (or plain ε callable) as given
    schedule: NoiseSchedule
    prediction: Prediction
    shape: tuple[int, ...]  # one sample's
    device: torch.device


def target(
    model: Model | Callable,
    execution: Execution,
    *,
    noise: Tensor | None = None,
    shape: Sequence[int] | None = None,
    schedule: NoiseSchedule | None = None,
) -> Target:
    """The `Target` of `model` (a `Model`, or a plain ε callable given `schedule`) for samples
    shaped like `noise`'s rows, or `shape`, or the model's image shape."""
    if isinstance(model, Model):
        if schedule is not None and schedule is not model.schedule:
            raise ValueError("schedule= is only for plain callables: a Model carries its own")
        net, schedule, prediction, want = model.net, model.schedule, model.prediction, model.image_shape
        params = [*net.parameters(), *net.buffers()]
        home = params[0].device if params else torch.device("cpu")
        device = home if execution.device is None else torch.device(execution.device)
        net.to(device)
    elif callable(model):
        if schedule is None:
            raise ValueError("a plain callable model needs schedule= (a NoiseSchedule)")
        net, prediction, want = model, "eps", None
        home = noise.device if noise is not None else torch.device("cpu")
        device = home if execution.device is None else torch.device(execution.device)
    else:
        raise ValueError(
            f"model must be a ddim Model or a callable eps_fn(x_t, t), got {type(model).__name__}"
        )
    sample_shape = _check_shape(noise, shape, want)
    if execution.channels_last and len(sample_shape) != 3:
        raise ValueError(f"channels_last is for images (C, H, W), got samples of shape {sample_shape}")
    return Target(net, schedule, prediction, sample_shape, device)


def sample(
    model: Model | Callable[[Tensor, Tensor], Tensor],
    n: int | None = None,
    *,
    noise: Tensor | None = None,
    shape: Sequence[int] | None = None,
    schedule: NoiseSchedule | None = None,
    steps: int | None = None,
    eta: float | None = None,
    sampler: str = "ddim",
    spacing: Spacing = "uniform",
    timesteps: Sequence[int] | Tensor | None = None,
    seed: int | None = None,
    clip: bool | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
    precision: Precision = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    return_trajectory: bool = False,
    start_index: int = 0,
    on_step: Callable[[StepInfo], None] | None = None,
    classes: Classes | None = None,
    guidance: float | None = None,
    dynamic_threshold: float | None = None,
) -> Tensor | tuple[Tensor, Trajectory]:
    """Draw n samples, (n, *shape) float32 on the CPU, in the data range ([-1, 1] for images).

    model: a loaded `Model`, or any callable eps_fn(x_t, t) → ε̂ given `schedule=` and `noise=`
    or `shape=`. steps: S timesteps (default 50) spaced by `spacing`, or an explicit
    `timesteps=` list; neither: a distilled student's own (`Model.default_timesteps`).
    sampler: a name of `ddim.samplers.names()`. eta ∈ [0, 1] (sampler "ddim" only; default 0).
    clip: clamp x̂_0 to [-1, 1] (default off, as in the paper's code;
    always on for "ddpm-large"). Sample i draws its x_T and its step noise from generators
    seeded by (seed, i), so it does not depend on n, batch_size or the device; seed=None picks a
    fresh random seed. `noise=` gives x_T directly. A `Model`'s net is moved to `device`
    (default: where its parameters are).
    start_index: draw samples start_index … start_index + n − 1 of the seed's sequence (a shard
    of a larger run gives the same images as the whole run).
    precision, channels_last, compile, batch_size, device: how the network runs
    (`ddim.execution.Execution`: the compiled code is kept for the process).
    on_step: called after every step of every batch with its `StepInfo` (x_t' and x̂_0 of the
    batch, on the sampling device); an exception it raises stops sampling and propagates.
    classes: for a class-conditional model, one class (index or name) for all n samples or one
    per sample; without it a conditional model samples unconditionally (its null class).
    guidance: the classifier-free guidance weight w ∈ [0, 20] (default 1: plain conditional), see
    `ddim.guidance`. dynamic_threshold: a percentile p ∈ (0, 1] of Imagen's dynamic thresholding
    of x̂_0 (e.g. 0.995, for high guidance).
    """
    execution = Execution(device, precision, channels_last, compile, batch_size)
    goal = target(model, execution, noise=noise, shape=shape, schedule=schedule)
    n = check_n(n, noise)
    plan = resolve(
        model, n, schedule=goal.schedule, steps=steps, spacing=spacing, timesteps=timesteps,
        sampler=sampler, eta=eta, clip=clip, seed=seed, classes=classes, guidance=guidance,
        dynamic_threshold=dynamic_threshold,
    )  # fmt: skip
    return run(
        goal, plan, execution, n, noise=noise, start_index=start_index, progress=progress,
        on_step=on_step, return_trajectory=return_trajectory,
    )  # fmt: skip


def run(
    goal: Target,
    plan: SamplePlan,
    execution: Execution,
    n: int,
    *,
    noise: Tensor | None = None,
    start_index: int = 0,
    progress: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, Trajectory]:
    """Run `plan` for n samples in batches of `execution.batch_size`: from `noise` (n, *shape)
    when given (for an inversion plan, the images), else from the seeded x_T of samples
    start_index … start_index + n − 1. Returns (n, *shape) float32 on the CPU."""
    start_index = check_index(start_index, "start_index")
    batch_size = execution.batch_size or n
    chunks = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    prepared = execution.prepare(goal.net)
    outputs, records = [], []
    unit, desc = ("img", "inverting") if plan.ascending else ("step", "sampling")
    total = n if plan.ascending else len(chunks) * plan.steps
    bar = tqdm(total=total, disable=not progress, unit=unit, desc=desc)
    with torch.no_grad(), _eval_mode(goal.net), bar:
        for idx in chunks:
            if noise is not None:
                x_T = noise[idx.start : idx.stop].to(device=goal.device, dtype=torch.float32)
            else:
                x_T = seeded_latents(goal.shape, plan.seed, [start_index + i for i in idx]).to(goal.device)
            gens = [sample_generator(plan.seed, start_index + i, _STEP_NOISE_STREAM) for i in idx]
            call = _eps_function(prepared, goal, plan.rows(idx.start, idx.stop), execution)
            x, record = _run_chunk(goal, plan, call, x_T, gens, bar, on_step, return_trajectory)
            outputs.append(x.float().cpu())
            records.append((x_T.cpu(), record))
    x = torch.cat(outputs)
    if not return_trajectory:
        return x
    xt = torch.cat([torch.stack([x_T, *(r.x for r in rec)]) for x_T, rec in records], dim=1)
    x0 = torch.cat([torch.stack([r.x0 for r in rec]) for _, rec in records], dim=1)
    return x, Trajectory(torch.tensor(plan.path), xt, x0)


def _eps_function(prepared: Callable, goal: Target, plan: SamplePlan, execution: Execution) -> Callable:
    """The prepared network with the plan's guidance and thresholding, run in its precision."""
    call = prepared
    if plan.labels is not None:
        labels = torch.tensor(plan.labels, dtype=torch.int64)
        call = guided(call, labels, plan.weight, num_classes(goal.net))
    if plan.dynamic_threshold is not None:
        call = dynamic_thresholding(call, goal.schedule, goal.prediction, plan.dynamic_threshold)
    return execution.in_precision(call, goal.device)


def _run_chunk(
    goal: Target,
    plan: SamplePlan,
    call: Callable,
    x_T: Tensor,
    gens: list[torch.Generator],
    bar: tqdm,
    hook: Callable[[StepInfo], None] | None,
    keep: bool,
) -> tuple[Tensor, list[StepInfo]]:
    """One batch; with `keep`, also every step's state (on the CPU)."""
    record: list[StepInfo] = []

    def on_step(info: StepInfo) -> None:
        if not plan.ascending:
            bar.update(1)
        if keep:
            record.append(StepInfo(info.index, info.t, info.t_next, info.x.cpu(), info.x0.cpu()))
        if hook is not None:
            hook(info)

    x = denoise(
        call, x_T, goal.schedule, plan.path, prediction=goal.prediction, sampler=plan.sampler,
        eta=plan.eta, clip=plan.clip, step_noise=lambda: _draw(gens, x_T), on_step=on_step,
    )  # fmt: skip
    if plan.ascending:
        bar.update(x.shape[0])
    return x, record


def _draw(gens: list[torch.Generator], like: Tensor) -> Tensor:
    """One N(0, I) draw per sample from its own generator, (B, *shape) on like's device."""
    z = torch.stack([torch.randn(like.shape[1:], generator=g) for g in gens])
    return z.to(device=like.device, dtype=like.dtype)


def _check_shape(
    noise: Tensor | None, shape: Sequence[int] | None, want: tuple[int, ...] | None
) -> tuple[int, ...]:
    if noise is not None:
        if not isinstance(noise, Tensor) or noise.ndim < 2:
            raise ValueError("noise must be a tensor (n, *sample_shape)")
        got = tuple(noise.shape[1:])
    elif shape is not None:
        got = tuple(int(s) for s in shape)
    elif want is not None:
        got = want
    else:
        raise ValueError("a plain callable model needs noise= or shape= (the shape of one sample)")
    if want is not None and got != want:
        raise ValueError(f"sample shape {got} does not match the model's image shape {want}")
    if not got or any(s < 1 for s in got):
        raise ValueError(f"shape must be positive integers, got {got}")
    return got


MAX_SAMPLES = (
    10**8
)  # samples of one call: 2,000 FID sets of 50,000 (the -n of the issue-24 reports ran out of memory)


def check_n(n: int | None, noise: Tensor | None) -> int:
    """The number of samples: n (default 1), or the rows of `noise`, which n must then match."""
    if noise is not None:
        if n is not None and n != noise.shape[0]:
            raise ValueError(f"n={n} disagrees with noise of batch size {noise.shape[0]}")
        n = noise.shape[0]
    n = 1 if n is None else n
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if n > MAX_SAMPLES:
        raise ValueError(f"n must be at most {MAX_SAMPLES:,}, got {n:,}")
    return n


@contextlib.contextmanager
def _eval_mode(net: Callable) -> Iterator[None]:
    """Put an nn.Module in eval mode (no dropout) for the duration, then restore its mode."""
    if not isinstance(net, nn.Module):
        yield
        return
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)
