"""The sampling loop: eq. 12 (`ddim.update`) over the pairs of an explicit timestep sequence.

One function, `denoise`, serves every sampler of `ddim.samplers` (DDIM at any η, DDPM, σ̂ and
the ODE solvers) and inversion (an ascending sequence at η = 0). It knows no batching, seeds,
devices or precision: the shell (`ddim.sampling`) hands it a network callable already prepared
(`ddim.execution`) and a source of step noise.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor

from ddim import samplers
from ddim.models.parameterization import Prediction, eps_from_x0, to_x0_eps
from ddim.schedule import NoiseSchedule
from ddim.update import Evaluation, ddim_step


@dataclass(frozen=True)
class StepInfo:
    """What one step saw and made; handed to `on_step` callbacks."""

    index: int  # 0-based step number
    t: int
    t_next: int
    x: Tensor  # x_t' after the step, (B, *shape)
    x0: Tensor  # x̂_0 predicted at t, (B, *shape)


def check_sequence(ts: Sequence[int], T: int) -> list[int]:
    """`ts` as ints, refused unless strictly monotone in [0, T − 1], with −1 (clean) only at the end."""
    ts = [int(t) for t in ts]
    diffs = [b - a for a, b in pairwise(ts)]
    if len(ts) < 2 or not (all(d < 0 for d in diffs) or all(d > 0 for d in diffs)):
        raise ValueError(f"timesteps must be a strictly monotone sequence of 2 or more, got {ts}")
    if min(ts[:-1]) < 0 or ts[-1] < -1 or max(ts) >= T:
        raise ValueError(f"timesteps must be in [0, {T - 1}] (and -1, clean, only at the end), got {ts}")
    return ts


def check_direction(ts: Sequence[int], sampler: str, eta: float) -> None:
    """An ascending sequence (inversion) runs the deterministic ODE upward: DDIM at η = 0 only."""
    if len(ts) > 1 and ts[1] > ts[0] and (sampler != "ddim" or eta != 0):
        raise ValueError("an ascending timestep sequence (inversion) needs sampler 'ddim' with eta = 0")


def denoise(
    net: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    schedule: NoiseSchedule,
    ts: Sequence[int],
    *,
    prediction: Prediction = "eps",
    sampler: str = "ddim",
    eta: float | None = None,
    clip: bool = False,
    step_noise: Callable[[], Tensor] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
) -> Tensor:
    """Run eq. 12 over the pairs (τ_i, τ_{i+1}) of `ts`, evaluating `net` once per pair at τ_i.

    `ts` is strictly monotone in [−1, T − 1]; −1 (clean) may only end it. Descending sequences
    sample; ascending ones (η = 0 only) run the deterministic ODE upward, as inversion does.
    eta: None is the sampler's default (`SamplerSpec.check_eta`). `step_noise()` returns fresh
    N(0, I) noise shaped like x whenever a step needs it. The sampler (`ddim.samplers`) chooses
    the (x̂_0, ε̂) fed to eq. 12 from this and the previous steps' network outputs, may first
    correct x with this step's evaluation, and sets σ.
    """
    ts = check_sequence(ts, schedule.num_timesteps)
    spec = samplers.get(sampler)
    eta = spec.check_eta(eta)
    check_direction(ts, sampler, eta)
    if not torch.isfinite(x).all():
        raise ValueError("the starting x holds NaN or inf values (the noise x_T, or the image to invert)")
    finite: list[Tensor] = []  # per step: (network output finite, x after the step finite), on x's device
    history: deque[Evaluation] = deque(maxlen=spec.history)  # the latest network outputs
    x_prev = x  # where the last step started, for a corrector
    for i, (t, t_next) in enumerate(pairwise(ts)):
        a_t, a_next = (schedule.alpha_bar_at(s).item() for s in (t, t_next))
        out = net(x, torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device))
        x0, eps = to_x0_eps(out.to(x.dtype), x, a_t, prediction)
        if clip:  # keep ε̂ consistent with the clipped x̂_0, so eq. 12 stays the posterior mean
            x0 = x0.clamp(-1, 1)
            eps = eps_from_x0(x, x0, a_t)
        sigma, noise_std = spec.sigmas(eta, a_t, a_next, t_next == -1)
        z = step_noise() if noise_std > 0 and step_noise is not None else None
        if noise_std > 0 and z is None:
            raise ValueError(f"sampler {sampler!r} with eta={eta} needs step noise")
        history.append(Evaluation(t, x0, eps))
        if spec.correct is not None:
            x = spec.correct(schedule, history, x_prev, x)
        x_prev = x
        x = ddim_step(*spec.predict(schedule, history, x, t_next), a_next, sigma, z, noise_std)
        finite.append(torch.stack([torch.isfinite(out).all(), torch.isfinite(x).all()]))
        if on_step is not None:
            on_step(StepInfo(i, t, t_next, x, x0))
    _check_finite(finite, ts)
    return x


def _check_finite(finite: list[Tensor], ts: list[int]) -> None:
    """Refuse a run whose network output or state became NaN or inf, naming the first step.

    The flags stay on the device during the loop (no synchronization per step); this one check
    reads them all at once: two reductions per step, against a network evaluation per step.
    """
    if not finite:
        return
    flags = torch.stack(finite).cpu()  # (steps, 2)
    if flags.all():
        return
    i, what = divmod(int((~flags).flatten().nonzero()[0]), 2)
    where = "the network's output" if what == 0 else "x after the update"
    raise ValueError(
        f"the samples hold NaN or inf values: they first appeared in {where} at step {i + 1} of "
        f"{len(ts) - 1} (t = {ts[i]}); the model's weights or outputs are not finite there"
    )
