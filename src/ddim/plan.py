"""What a sampling run computes, resolved once: `SamplePlan`, made by `resolve`.

Every entry point (`sample`, `invert`, `interpolate`, `edit`, the streaming writer, the
evaluation sweeps, the server and the CLI, `--dry-run` included) validates its sampling
settings here and nowhere else: the effective sampler and η, clipping, the timestep
sequence, the seed, the classes and guidance, dynamic thresholding. How the network runs
(device, precision, channels-last, compile, batch size) is the other value, `ddim.execution.Execution`;
neither changes the other.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ddim import samplers
from ddim.guidance import Classes, check_threshold, conditioning
from ddim.models import Model
from ddim.schedule import NoiseSchedule, Spacing, custom_timesteps, timesteps

DEFAULT_STEPS = 50


@dataclass(frozen=True)
class SamplePlan:
    """A validated sampling run: `denoise` runs `path` with these settings for every sample."""

    sampler: str
    eta: float  # the effective η (the sampler's own where it fixes one)
    clip: bool  # clamp x̂_0 to [-1, 1]
    path: tuple[int, ...]  # what the loop runs: τ_S > … > τ_1 then −1 (clean); upward to invert
    seed: int  # sample i draws from the generators (seed, i)
    labels: tuple[int, ...] | None = None  # one class per sample of the call, or unconditional
    guidance: float | None = None  # the guidance weight w asked for (None: 1 with labels)
    dynamic_threshold: float | None = None  # Imagen's percentile p, or off

    @property
    def spec(self) -> samplers.SamplerSpec:
        return samplers.get(self.sampler)

    @property
    def timesteps(self) -> list[int]:
        """The sub-sequence τ, descending; for an inversion plan, its upward path."""
        return list(self.path) if self.ascending else list(self.path[:-1])

    @property
    def ascending(self) -> bool:
        return len(self.path) > 1 and self.path[1] > self.path[0]

    @property
    def steps(self) -> int:
        """Steps of the loop; network evaluations are steps × the sampler's NFE per step."""
        return len(self.path) - 1

    @property
    def weight(self) -> float:
        return 1.0 if self.guidance is None else self.guidance

    def rows(self, start: int, stop: int) -> SamplePlan:
        """The plan of samples start … stop − 1 of this one (their labels)."""
        return self if self.labels is None else replace(self, labels=self.labels[start:stop])

    def inverted(self) -> SamplePlan:
        """DDIM inversion of this plan's sub-sequence: η = 0 upward over 0, τ_1, …, τ_S."""
        path = tuple(upward_sequence(self.path[:-1]))
        return replace(self, sampler="ddim", eta=0.0, clip=False, path=path, dynamic_threshold=None)

    def view(self) -> dict:
        """The plan as JSON: what `--dry-run` prints and result records keep."""
        return {
            "sampler": self.sampler, "eta": self.eta, "clip": self.clip, "steps": self.steps,
            "nfe": self.steps * self.spec.nfe_per_step, "timesteps": self.timesteps, "seed": self.seed,
            "classes": None if self.labels is None else list(self.labels),
            "guidance": None if self.labels is None else self.weight,
            "dynamic_threshold": self.dynamic_threshold,
        }  # fmt: skip


def upward_sequence(seq: Sequence[int] | Tensor) -> list[int]:
    """The inversion path for a descending sampling sub-sequence τ_S > … > τ_1: 0, τ_1, …, τ_S."""
    up = [int(t) for t in reversed(list(seq))]
    return up if up[0] == 0 else [0, *up]


def sub_sequence(
    schedule: NoiseSchedule,
    steps: int | None = None,
    spacing: Spacing = "uniform",
    explicit: Sequence[int] | Tensor | None = None,
) -> Tensor:
    """The descending sub-sequence τ: S = `steps` (default 50) by `spacing`, or `explicit`."""
    T = schedule.num_timesteps
    if explicit is None:
        return timesteps(T, DEFAULT_STEPS if steps is None else steps, spacing, schedule)
    seq = custom_timesteps(T, explicit)
    if steps is not None and steps != seq.numel():
        raise ValueError(f"steps={steps} disagrees with the {seq.numel()} explicit timesteps given")
    return seq


def resolve(
    model: Model | Callable,
    n: int | None = None,
    *,
    schedule: NoiseSchedule | None = None,
    steps: int | None = None,
    spacing: Spacing = "uniform",
    timesteps: Sequence[int] | Tensor | None = None,
    sampler: str = "ddim",
    eta: float | None = None,
    clip: bool | None = None,
    seed: int | None = None,
    classes: Classes | None = None,
    guidance: float | None = None,
    dynamic_threshold: float | None = None,
) -> SamplePlan:
    """Validate a run's settings once; see `ddim.sample` for each. n: samples of the call (for
    one class per sample). seed=None picks a fresh random seed, which the plan then holds."""
    schedule = model.schedule if isinstance(model, Model) else schedule
    if schedule is None:
        raise ValueError("a plain callable model needs schedule= (a NoiseSchedule)")
    labels, _ = conditioning(model, classes, guidance, 1 if n is None else n)
    if eta is not None and not (isinstance(eta, int | float) and not isinstance(eta, bool) and 0 <= eta <= 1):
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
    spec = samplers.get(sampler)
    eta = spec.check_eta(eta)
    distilled = model.default_timesteps if isinstance(model, Model) else None
    if distilled is not None and steps is None and timesteps is None:
        timesteps = distilled  # a distilled student samples on its own timesteps by default
    path = (*sub_sequence(schedule, steps, spacing, timesteps).tolist(), -1)
    if distilled is not None:
        check_distilled(distilled, path[:-1], spec.name, eta)
    seed = int(torch.randint(0, 2**62, ())) if seed is None else check_index(seed)
    if dynamic_threshold is not None:
        check_threshold(dynamic_threshold)
    clip = spec.clip if clip is None else bool(clip)
    if labels is None:
        return SamplePlan(spec.name, eta, clip, path, seed, None, None, dynamic_threshold)
    return SamplePlan(spec.name, eta, clip, path, seed, tuple(labels.tolist()), guidance, dynamic_threshold)


class DistilledWarning(UserWarning):
    """A distilled student sampled otherwise than it was distilled for (its samples suffer)."""


def check_distilled(distilled: Sequence[int], ts: Sequence[int], sampler: str, eta: float) -> None:
    """Warn, in one line, when a student distilled for DDIM η = 0 on `distilled` runs on other
    timesteps `ts`, another sampler or η > 0."""
    if list(ts) == list(distilled) and sampler == "ddim" and eta == 0:
        return
    how = [f"timesteps {list(ts)}"] if list(ts) != list(distilled) else []
    how += [f"sampler {sampler!r}"] if sampler != "ddim" else []
    how += [f"eta={eta}"] if eta != 0 else []
    warnings.warn(
        f"this model was distilled for DDIM (eta=0) on timesteps {list(distilled)}; sampling it with "
        f"{', '.join(how)} gives worse samples (leave out steps= and timesteps= to use its own)",
        DistilledWarning,
        stacklevel=3,
    )


def check_index(value: int, name: str = "seed") -> int:
    """A non-negative integer (a seed, a sample index)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value
