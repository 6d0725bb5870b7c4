"""Noise schedules and timestep sub-sequences.

Forward process (DDPM, Ho et al. 2020, eq. 4): q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) with
ᾱ_t = ∏_{s ≤ t} (1 − β_s). Training timesteps are 0-based, t ∈ [0, T − 1]; the index −1 stands
for clean data (ᾱ = 1), where every sampler ends (DDIM, Song et al. 2021, eq. 12 with α_0 = 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

Spacing = Literal["uniform", "quadratic", "trailing", "linspace", "logsnr"]
SPACINGS: tuple[str, ...] = get_args(Spacing)


@dataclass(frozen=True, eq=False)  # eq=False: tensor fields cannot be compared with ==
class NoiseSchedule:
    """An immutable DDPM noise schedule, in float64. Build it with a named constructor."""

    betas: Tensor  # float64 (T,), each in (0, 1)
    alpha_bar: Tensor = field(init=False)  # float64 (T,), ᾱ_t = ∏_{s≤t} (1 − β_s), decreasing

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64).detach().cpu().clone()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
        if not torch.isfinite(betas).all() or not ((betas > 0) & (betas < 1)).all():
            bad = betas[~(torch.isfinite(betas) & (betas > 0) & (betas < 1))][0].item()
            raise ValueError(f"every beta must be in (0, 1), got {bad}")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alpha_bar", torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def from_betas(cls, betas: Sequence[float] | Tensor | np.ndarray) -> NoiseSchedule:
        """A schedule from explicit β_1..β_T."""
        return cls(torch.as_tensor(np.asarray(betas, dtype=np.float64)))

    @classmethod
    def linear(
        cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2
    ) -> NoiseSchedule:
        """β linear from beta_start to beta_end (DDPM; the DDIM paper's default, 1e-4 → 0.02)."""
        _check_num_timesteps(num_timesteps)
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
            )
        return cls(torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64))

    @classmethod
    def cosine(cls, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """Nichol & Dhariwal (2021) eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2)."""
        _check_num_timesteps(num_timesteps)
        if s <= 0 or not 0 < max_beta < 1:
            raise ValueError(f"need s > 0 and 0 < max_beta < 1, got s={s}, max_beta={max_beta}")
        t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return cls((1 - f[1:] / f[:-1]).clamp(max=max_beta))  # β_t = 1 − ᾱ_t / ᾱ_{t−1}

    @property
    def num_timesteps(self) -> int:
        return self.betas.numel()

    @property
    def log_snr(self) -> Tensor:
        """log SNR_t = log(ᾱ_t / (1 − ᾱ_t)), float64 (T,), decreasing; DPM-Solver's λ_t is half of it."""
        return torch.log(self.alpha_bar / (1 - self.alpha_bar))

    def alpha_bar_at(self, t: int | Tensor) -> Tensor:
        """ᾱ_t for t ∈ [−1, T − 1] (an int or an int tensor); t = −1 gives 1, clean data."""
        t = torch.as_tensor(t, dtype=torch.int64)
        if ((t < -1) | (t >= self.num_timesteps)).any():
            raise ValueError(f"timesteps must be in [-1, {self.num_timesteps - 1}], got {t.tolist()}")
        padded = torch.cat([self.alpha_bar.new_ones(1), self.alpha_bar])  # (T + 1,)
        return padded[t + 1]

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM eq. 4), per sample t of shape (B,)."""
        a = self.alpha_bar_at(t.cpu()).to(device=x0.device, dtype=x0.dtype)
        a = a.view(-1, *([1] * (x0.ndim - 1)))  # (B, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def describe(self) -> str:
        """A one-line human summary, e.g. for `ddim info`."""
        b = self.betas
        return (
            f"T={self.num_timesteps}, beta {b[0].item():.4g} -> {b[-1].item():.4g}, "
            f"alpha_bar_T={self.alpha_bar[-1].item():.3e}"
        )


def _check_num_timesteps(num_timesteps: int) -> None:
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")


def timesteps(
    num_timesteps: int, steps: int, spacing: Spacing = "uniform", schedule: NoiseSchedule | None = None
) -> Tensor:
    """The DDIM sub-sequence τ of `steps` training timesteps, strictly decreasing (int64).

    For T timesteps and S steps, i = 0..S−1:
      uniform    τ_i = ⌊i·T/S⌋: the official `range(0, T, T//S)` whenever S divides T, and
                 exactly S steps otherwise;
      quadratic  τ_i = ⌊(i·√(0.8 T)/(S − 1))²⌋: the official code's "quad";
      trailing   τ_i = round(T − i·T/S) − 1: always starts at T − 1 (999, 899, …, 99 for S = 10);
      linspace   τ_i = round(i·(T − 1)/(S − 1)), as numpy's linspace computes it;
      logsnr     τ_i = the timestep whose log SNR is nearest to the i-th of S points spaced
                 uniformly from log SNR_{T−1} to log SNR_0 (so its ends are T − 1 and 0); it
                 needs `schedule`, whose log SNR it reads.
    Rounding is half-to-even, in float64. Linspace equals diffusers' "linspace" and uniform
    its "leading" when S divides T; trailing equals diffusers' "trailing" except that we
    compute T − i·T/S per step instead of accumulating np.arange, which in diffusers can round
    an exact .5 the other way or add a step at −1 when S does not divide T.

    Quadratic repeats timesteps near t = 0 once S is large (S = 50 gives 49 distinct values,
    S = 100 gives 96), and so does logsnr, where one timestep spans a wide log-SNR interval
    (the linear DDPM schedule: S = 50 gives 49).
    Repeats are dropped: the official code runs them as steps from t to the same t, where
    ᾱ_t = ᾱ_next makes the update return its input unchanged for every η, so the samples are
    the same with fewer network evaluations. The result may then hold fewer than S timesteps.
    """
    _check_num_timesteps(num_timesteps)
    T, S = num_timesteps, steps
    if not isinstance(S, int) or not 1 <= S <= T:
        raise ValueError(f"steps must be an integer in [1, {T}] (the training timesteps), got {S!r}")
    i = np.arange(S, dtype=np.float64)
    if spacing == "uniform":
        seq = np.arange(S, dtype=np.int64) * T // S
    elif spacing == "quadratic":
        seq = (np.linspace(0, np.sqrt(0.8 * T), S) ** 2).astype(np.int64)
    elif spacing == "trailing":
        seq = np.round(T - i * (T / S)).astype(np.int64) - 1
    elif spacing == "linspace":
        seq = np.round(np.linspace(0, T - 1, S)).astype(np.int64)
    elif spacing == "logsnr":
        seq = _nearest_log_snr(T, S, schedule)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    return torch.from_numpy(np.unique(seq)[::-1].copy())  # unique sorts ascending; flip


def _nearest_log_snr(T: int, S: int, schedule: NoiseSchedule | None) -> np.ndarray:
    """For each of S log SNRs uniform from log SNR_{T−1} to log SNR_0, the nearest timestep."""
    if schedule is None or schedule.num_timesteps != T:
        got = "none" if schedule is None else f"one of {schedule.num_timesteps} timesteps"
        raise ValueError(f"logsnr spacing needs the schedule of the {T} timesteps (schedule=), got {got}")
    log_snr = schedule.log_snr.numpy()  # (T,)
    target = np.linspace(log_snr[T - 1], log_snr[0], S)  # (S,), increasing: t from T − 1 down to 0
    return np.abs(log_snr[None, :] - target[:, None]).argmin(axis=1)  # (S,)


def custom_timesteps(num_timesteps: int, values: Sequence[int] | Tensor) -> Tensor:
    """A user-given sub-sequence, validated and sorted strictly decreasing (int64)."""
    _check_num_timesteps(num_timesteps)
    seq = torch.as_tensor(values)
    if seq.ndim != 1 or seq.numel() == 0:
        raise ValueError("timesteps must be a non-empty list of integers")
    if seq.is_floating_point() or seq.is_complex():
        raise ValueError(f"timesteps must be integers, got {seq.tolist()}")
    seq = seq.to(torch.int64)
    outside = (seq < 0) | (seq >= num_timesteps)
    if outside.any():
        raise ValueError(f"timesteps must be in [0, {num_timesteps - 1}], got {seq[outside].tolist()}")
    unique = torch.unique(seq)
    if unique.numel() != seq.numel():
        raise ValueError(f"timesteps must be distinct, got {seq.tolist()}")
    return unique.flip(0)
