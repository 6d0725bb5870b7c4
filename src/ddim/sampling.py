"""The generalized DDIM sampler (Song, Meng & Ermon, ICLR 2021, arXiv 2010.02502).

One update rule, eq. 12, from timestep t to the next timestep t' of a sub-sequence τ:

    x_t' = √ᾱ_t' x̂_0 + √(1 − ᾱ_t' − σ²) ε̂ + σ z,      x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t,
    σ(η) = η √((1 − ᾱ_t')/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_t')   (eq. 16).

η = 0 is the deterministic DDIM; η = 1 with every timestep is DDPM's ancestral sampler (its
mean and variance are the posterior q(x_t' | x_t, x̂_0)). "ddpm-large" is the paper's σ̂ (Table 1,
the official `ddpm_noisy`): the η = 1 mean with noise of variance β̂ = 1 − ᾱ_t/ᾱ_t' instead,
x̂_0 clipped, and no noise on the last step. The chain ends at t' = −1, clean data (ᾱ = 1).
The higher-order ODE solvers "dpm-solver++", "unipc" and "plms" (`ddim.solvers`) take the same
η = 0 step with a prediction extrapolated from the previous steps' network outputs (UniPC also
corrects each step's result once the next evaluation is in).
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddim.execution import PRECISIONS, Net, Precision, autocast, prepare
from ddim.guidance import Classes, conditioning, dynamic_thresholding, guided
from ddim.models import Model, num_classes
from ddim.models.parameterization import Prediction, eps_from_x0, to_x0_eps
from ddim.rng import seeded_generator
from ddim.schedule import NoiseSchedule, Spacing, custom_timesteps, timesteps
from ddim.solvers import SOLVERS, Evaluation, correct, extrapolate

Sampler = Literal["ddim", "ddpm", "ddpm-large", "dpm-solver++", "unipc", "plms"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)
_LATENT_STREAM, _STEP_NOISE_STREAM = 0, 1  # two independent random streams per sample


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
    alpha_bar_next: float,
    sigma: float,
    z: Tensor | None = None,
    noise_std: float | None = None,
) -> Tensor:
    """Eq. 12: √ᾱ_t' x̂_0 + √(1 − ᾱ_t' − σ²) ε̂ + σ z. `noise_std` replaces σ on z only (σ̂)."""
    noise_std = sigma if noise_std is None else noise_std
    x = math.sqrt(alpha_bar_next) * x0 + math.sqrt(max(0.0, 1 - alpha_bar_next - sigma**2)) * eps
    return x if z is None or noise_std == 0 else x + noise_std * z


@dataclass(frozen=True)
class StepInfo:
    """What one step saw and made; handed to `on_step` callbacks."""

    index: int  # 0-based step number
    t: int
    t_next: int
    x: Tensor  # x_t' after the step, (B, *shape)
    x0: Tensor  # x̂_0 predicted at t, (B, *shape)


def _step_sigmas(sampler: Sampler, eta: float, a_t: float, a_next: float, last: bool) -> tuple[float, float]:
    """(σ in the mean of eq. 12, std of the added noise) for one step of the given sampler."""
    if sampler == "ddpm-large":
        return sigma_eta(a_t, a_next, 1.0), 0.0 if last else math.sqrt(1 - a_t / a_next)
    sigma = sigma_eta(a_t, a_next, 1.0 if sampler == "ddpm" else eta)
    return sigma, sigma


def denoise(
    net: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    schedule: NoiseSchedule,
    ts: Sequence[int],
    *,
    prediction: Prediction = "eps",
    sampler: Sampler = "ddim",
    eta: float = 0.0,
    clip: bool = False,
    step_noise: Callable[[], Tensor] | None = None,
    precision: Precision = "fp32",
    on_step: Callable[[StepInfo], None] | None = None,
) -> Tensor:
    """Run eq. 12 over the pairs (τ_i, τ_{i+1}) of `ts`, evaluating `net` once per pair at τ_i.

    `ts` is strictly monotone in [−1, T − 1]; −1 (clean) may only end it. Descending sequences
    sample; ascending ones (η = 0 only) run the deterministic ODE upward, as inversion does.
    `step_noise()` returns fresh N(0, I) noise shaped like x whenever a step needs it. The ODE
    solvers ("dpm-solver++", "unipc", "plms": η = 0, descending only) feed eq. 12 the prediction
    that `solvers.extrapolate` makes from this and the previous steps' network outputs; UniPC
    first corrects x (`solvers.correct`) with this step's evaluation.
    """
    ts = _check_sequence(ts, schedule.num_timesteps)
    if len(ts) > 1 and ts[1] > ts[0] and (sampler != "ddim" or eta != 0):
        raise ValueError("an ascending timestep sequence (inversion) needs sampler 'ddim' with eta = 0")
    if sampler in SOLVERS:
        check_eta(sampler, eta)
    in_precision = autocast(x.device, precision)
    history: deque[Evaluation] = deque(maxlen=4)  # the latest network outputs, for the ODE solvers
    x_prev = x  # where the last step started, for UniPC's corrector
    for i, (t, t_next) in enumerate(pairwise(ts)):
        a_t, a_next = (schedule.alpha_bar_at(s).item() for s in (t, t_next))
        with in_precision:
            out = net(x, torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device))
        x0, eps = to_x0_eps(out.to(x.dtype), x, a_t, prediction)
        if clip:  # keep ε̂ consistent with the clipped x̂_0, so eq. 12 stays the posterior mean
            x0 = x0.clamp(-1, 1)
            eps = eps_from_x0(x, x0, a_t)
        sigma, noise_std = _step_sigmas(sampler, eta, a_t, a_next, last=t_next == -1)
        z = step_noise() if noise_std > 0 and step_noise is not None else None
        if noise_std > 0 and z is None:
            raise ValueError(f"sampler {sampler!r} with eta={eta} needs step noise")
        history.append(Evaluation(t, x0, eps))
        x = x_prev = correct(sampler, schedule, history, x_prev, x)
        x = ddim_step(*extrapolate(sampler, schedule, history, x, t_next), a_next, sigma, z, noise_std)
        if on_step is not None:
            on_step(StepInfo(i, t, t_next, x, x0))
    return x


def _check_sequence(ts: Sequence[int], T: int) -> list[int]:
    ts = [int(t) for t in ts]
    diffs = [b - a for a, b in pairwise(ts)]
    if len(ts) < 2 or not (all(d < 0 for d in diffs) or all(d > 0 for d in diffs)):
        raise ValueError(f"timesteps must be a strictly monotone sequence of 2 or more, got {ts}")
    if min(ts[:-1]) < 0 or ts[-1] < -1 or max(ts) >= T:
        raise ValueError(f"timesteps must be in [0, {T - 1}] (and -1, clean, only at the end), got {ts}")
    return ts


def sample_generator(seed: int, index: int, stream: int) -> torch.Generator:
    """The CPU generator of sample `index` under `seed`: stream 0 draws x_T, stream 1 step noise."""
    return seeded_generator(seed, index, stream)


@dataclass(frozen=True)
class Trajectory:
    """Every state of a sampling run, on the CPU."""

    timesteps: Tensor  # (S + 1,) int64: τ_S … τ_1 and −1 (clean)
    xt: Tensor  # (S + 1, n, *shape): x_T, then x after each step (the last is the sample)
    x0: Tensor  # (S, n, *shape): x̂_0 predicted at each step


@dataclass(frozen=True)
class _Target:
    """A model resolved to what the loop needs."""

    net: Callable[[Tensor, Tensor], Tensor]
    call: Net  # net as the loop calls it: `execution.prepare`d
    schedule: NoiseSchedule
    prediction: Prediction
    shape: tuple[int, ...]
    device: torch.device


def sample(
    model: Model | Callable[[Tensor, Tensor], Tensor],
    n: int | None = None,
    *,
    noise: Tensor | None = None,
    shape: Sequence[int] | None = None,
    schedule: NoiseSchedule | None = None,
    steps: int | None = None,
    eta: float | None = None,
    sampler: Sampler = "ddim",
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
    `timesteps=` list. eta ∈ [0, 1] (sampler "ddim" only; default 0). clip: clamp x̂_0 to
    [-1, 1] (default off, as in the paper's code; always on for "ddpm-large"). Sample i draws
    its x_T and its step noise from generators seeded by (seed, i), so it does not depend on
    n, batch_size or the device; seed=None picks a fresh random seed. `noise=` gives x_T
    directly. A `Model`'s net is moved to `device` (default: where its parameters are).
    start_index: draw samples start_index … start_index + n − 1 of the seed's sequence (a shard
    of a larger run gives the same images as the whole run).
    channels_last, compile: run the network in channels-last memory, torch.compile it
    (`ddim.execution.prepare`: the compiled code is kept for the process).
    on_step: called after every step of every batch with its `StepInfo` (x_t' and x̂_0 of the
    batch, on the sampling device); an exception it raises stops sampling and propagates.
    classes: for a class-conditional model, one class (index or name) for all n samples or one
    per sample; without it a conditional model samples unconditionally (its null class).
    guidance: the classifier-free guidance weight w ∈ [0, 20] (default 1: plain conditional), see
    `ddim.guidance`. dynamic_threshold: a percentile p ∈ (0, 1] of Imagen's dynamic thresholding
    of x̂_0 (e.g. 0.995, for high guidance).
    """
    target = _resolve(model, noise, shape, schedule, device, channels_last=channels_last, compile=compile)
    n = _check_n(n, noise)
    labels, w = conditioning(model, classes, guidance, n)
    eta, clip = _check_options(sampler, eta, clip, batch_size, precision)
    seq = _sub_sequence(target.schedule, steps, spacing, timesteps)
    ts = [*seq.tolist(), -1]
    seed = int(torch.randint(0, 2**62, ())) if seed is None else _check_seed(seed)
    start_index = _check_seed(start_index, "start_index")
    batch_size = batch_size or n
    chunks = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]

    options = _Options(sampler, eta, clip, precision, on_step)
    outputs, records = [], []
    bar = tqdm(total=len(chunks) * len(seq), disable=not progress, unit="step", desc="sampling")
    with torch.no_grad(), _eval_mode(target.net), bar:
        for idx in chunks:
            x_T = _initial_noise(noise, idx, seed, target, start_index)
            gens = [sample_generator(seed, start_index + i, _STEP_NOISE_STREAM) for i in idx]
            call = target.call
            if labels is not None:
                call = guided(call, labels[idx.start : idx.stop], w, num_classes(target.net))
            if dynamic_threshold is not None:
                call = dynamic_thresholding(call, target.schedule, target.prediction, dynamic_threshold)
            chunk = replace(target, call=call)
            x, record = _sample_chunk(chunk, x_T, ts, gens, options, bar, return_trajectory)
            outputs.append(x.float().cpu())
            records.append((x_T.cpu(), record))
    x = torch.cat(outputs)
    if not return_trajectory:
        return x
    xt = torch.cat([torch.stack([x_T, *(r.x for r in rec)]) for x_T, rec in records], dim=1)
    x0 = torch.cat([torch.stack([r.x0 for r in rec]) for _, rec in records], dim=1)
    return x, Trajectory(torch.tensor(ts), xt, x0)


@dataclass(frozen=True)
class _Options:
    sampler: Sampler
    eta: float
    clip: bool
    precision: Precision
    on_step: Callable[[StepInfo], None] | None = None  # the caller's hook, after each step


def _sample_chunk(
    target: _Target,
    x_T: Tensor,
    ts: list[int],
    gens: list[torch.Generator],
    opts: _Options,
    bar: tqdm,
    keep: bool,
) -> tuple[Tensor, list[StepInfo]]:
    """Sample one batch; with `keep`, also return every step's state (on the CPU)."""
    record: list[StepInfo] = []

    def on_step(info: StepInfo) -> None:
        bar.update(1)
        if keep:
            record.append(StepInfo(info.index, info.t, info.t_next, info.x.cpu(), info.x0.cpu()))
        if opts.on_step is not None:
            opts.on_step(info)

    x = denoise(
        target.call, x_T, target.schedule, ts, prediction=target.prediction, sampler=opts.sampler,
        eta=opts.eta, clip=opts.clip, step_noise=lambda: _draw(gens, x_T),
        precision=opts.precision, on_step=on_step,
    )  # fmt: skip
    return x, record


def _draw(gens: list[torch.Generator], like: Tensor) -> Tensor:
    """One N(0, I) draw per sample from its own generator, (B, *shape) on like's device."""
    z = torch.stack([torch.randn(like.shape[1:], generator=g) for g in gens])
    return z.to(device=like.device, dtype=like.dtype)


def seeded_latents(shape: Sequence[int], seed: int, indices: Sequence[int]) -> Tensor:
    """The x_T of samples `indices` under `seed`, (len(indices), *shape) float32 on the CPU:
    exactly what `sample(..., seed=seed)` starts sample i from."""
    gens = [sample_generator(seed, i, _LATENT_STREAM) for i in indices]
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in gens])


def _initial_noise(noise: Tensor | None, idx: range, seed: int, target: _Target, start_index: int) -> Tensor:
    """x_T of the batch at positions `idx`: rows of `noise`, or drawn for samples start_index + idx."""
    if noise is not None:
        return noise[idx.start : idx.stop].to(device=target.device, dtype=torch.float32)
    return seeded_latents(target.shape, seed, [start_index + i for i in idx]).to(target.device)


def _resolve(
    model: Model | Callable,
    noise: Tensor | None,
    shape: Sequence[int] | None,
    schedule: NoiseSchedule | None,
    device: str | torch.device | None,
    *,
    channels_last: bool = False,
    compile: bool = False,
) -> _Target:
    if isinstance(model, Model):
        if schedule is not None and schedule is not model.schedule:
            raise ValueError("schedule= is only for plain callables: a Model carries its own")
        net, schedule, prediction, want = (
            model.net,
            model.schedule,
            model.prediction,
            model.image_shape,
        )
        params = [*net.parameters(), *net.buffers()]
        dev = (
            torch.device(device)
            if device is not None
            else params[0].device
            if params
            else torch.device("cpu")
        )
        net.to(dev)
    elif callable(model):
        if schedule is None:
            raise ValueError("a plain callable model needs schedule= (a NoiseSchedule)")
        net, prediction, want = model, "eps", None
        dev = (
            torch.device(device)
            if device is not None
            else noise.device
            if noise is not None
            else torch.device("cpu")
        )
    else:
        raise ValueError(
            f"model must be a ddim Model or a callable eps_fn(x_t, t), got {type(model).__name__}"
        )
    sample_shape = _check_shape(noise, shape, want)
    if channels_last and len(sample_shape) != 3:
        raise ValueError(f"channels_last is for images (C, H, W), got samples of shape {sample_shape}")
    call = prepare(net, channels_last=channels_last, compile=compile)
    return _Target(net, call, schedule, prediction, sample_shape, dev)


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


def _check_n(n: int | None, noise: Tensor | None) -> int:
    if noise is not None:
        if n is not None and n != noise.shape[0]:
            raise ValueError(f"n={n} disagrees with noise of batch size {noise.shape[0]}")
        n = noise.shape[0]
    n = 1 if n is None else n
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return n


def _check_seed(seed: int, name: str = "seed") -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {seed!r}")
    return seed


def check_eta(sampler: Sampler, eta: float | None) -> float:
    """The η `sampler` runs with, given the one asked for (None: the default). "ddim" takes any
    η (default 0); "ddpm" and "ddpm-large" fix η = 1, the ODE solvers η = 0: another is refused."""
    fixed = None if sampler == "ddim" else 0.0 if sampler in SOLVERS else 1.0
    if fixed is None:
        return float(eta or 0.0)
    if eta is not None and eta != fixed:
        kind = "is a deterministic ODE solver (η = 0)" if fixed == 0 else "fixes η = 1"
        raise ValueError(f"sampler {sampler!r} {kind}; eta={eta} is only for sampler 'ddim'")
    return fixed


def _check_options(
    sampler: str, eta: float | None, clip: bool | None, batch_size: int | None, precision: str
) -> tuple[float, bool]:
    """Validate the sampler options; return the effective (eta, clip)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if eta is not None and not (isinstance(eta, int | float) and 0.0 <= eta <= 1.0):
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return check_eta(sampler, eta), (sampler == "ddpm-large") if clip is None else bool(clip)


def _sub_sequence(
    schedule: NoiseSchedule, steps: int | None, spacing: Spacing, explicit: Sequence[int] | Tensor | None
) -> Tensor:
    T = schedule.num_timesteps
    if explicit is None:
        return timesteps(T, 50 if steps is None else steps, spacing, schedule)
    seq = custom_timesteps(T, explicit)
    if steps is not None and steps != seq.numel():
        raise ValueError(f"steps={steps} disagrees with the {seq.numel()} explicit timesteps given")
    return seq


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
