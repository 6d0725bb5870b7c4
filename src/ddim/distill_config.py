"""The progressive-distillation configuration: a frozen dataclass, read from TOML, written back as TOML.

A run distils `teacher` sampled by DDIM (η = 0) with `teacher_steps` steps into students of
teacher_steps/2, /4, … down to `final_steps` steps, one stage per halving (`ddim.distillation`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, get_args

from ddim.data import FITS, Fit
from ddim.models.parameterization import PREDICTIONS, Prediction
from ddim.train_config import TrainPrecision, check_choice, check_int, check_known, check_type, ema_warmup

LrDecay = Literal["linear", "constant"]
# Settings that may change when a run is resumed: they do not alter what is learned.
RESUMABLE = frozenset({"log_every", "checkpoint_every", "keep_checkpoints", "sample_every"})


@dataclass(frozen=True)
class DistillConfig:
    """Everything that determines a distillation run (the run folder and device are given apart)."""

    KIND: ClassVar[str] = "distillation"
    RESUMABLE: ClassVar[frozenset[str]] = RESUMABLE

    teacher: str = "mnist"  # the model to distil: a built-in name or a checkpoint path
    data: str = ""  # training images x_0 (an .npz array `data_key`, or an image folder)
    data_key: str = "x_train"
    fit: Fit = "pad"  # how images reach the teacher's resolution
    teacher_steps: int = 64  # N: the DDIM steps of stage 1's teacher, a power of two
    final_steps: int = 1  # the last student's steps, a power of two below teacher_steps
    student_prediction: Prediction = "v"  # what the students predict (docs/distillation.md: why v)
    steps_per_stage: int | tuple[int, ...] = 2000  # optimizer steps of each stage, or one per stage
    batch_size: int = 64
    lr: float = 1e-4  # peak learning rate (AdamW), again at the start of every stage
    warmup_steps: int = 0  # linear warm-up from 0 at the start of every stage
    lr_decay: LrDecay = "linear"  # within a stage: linear down to 0 at its end, or constant
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max global gradient norm (0: off)
    ema_decay: float = 0.999  # per step within a stage (warm-up as in training); 0: no averaging
    precision: TrainPrecision = "fp32"  # autocast of the teacher's and the student's forward passes
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    sample_every: int = 0  # extra sample grids within a stage (0: only the one at each stage's end)
    sample_n: int = 64

    def __post_init__(self) -> None:
        for f in fields(self):
            check_type(f.name, getattr(self, f.name), f.type)
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        check_choice("fit", self.fit, FITS)
        check_choice("student_prediction", self.student_prediction, PREDICTIONS)
        check_choice("lr_decay", self.lr_decay, get_args(LrDecay))
        check_choice("precision", self.precision, get_args(TrainPrecision))
        for name in ("teacher_steps", "final_steps", "batch_size", "log_every", "checkpoint_every",
                     "keep_checkpoints", "sample_n"):  # fmt: skip
            check_int(name, getattr(self, name))
        for name in ("warmup_steps", "sample_every", "seed"):
            check_int(name, getattr(self, name), allow_zero=True)
        for name in ("teacher_steps", "final_steps"):
            n = getattr(self, name)
            if n & (n - 1):
                raise ValueError(f"{name} must be a power of two (each stage halves the steps), got {n}")
        if self.final_steps >= self.teacher_steps:
            raise ValueError(
                f"final_steps={self.final_steps} must be fewer than teacher_steps={self.teacher_steps}: "
                "a student takes half its teacher's steps"
            )
        self._check_stage_steps()
        if not self.teacher:
            raise ValueError("teacher must name a model (a built-in name or a checkpoint path)")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError(
                f"grad_clip and weight_decay must be >= 0, got {self.grad_clip}, {self.weight_decay}"
            )
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")

    def _check_stage_steps(self) -> None:
        value = self.steps_per_stage
        if isinstance(value, list | tuple):
            value = tuple(value)
            object.__setattr__(self, "steps_per_stage", value)
            if len(value) != self.num_stages:
                raise ValueError(
                    f"steps_per_stage must be one number, or {self.num_stages} (one per stage from "
                    f"{self.teacher_steps} to {self.final_steps} steps), got {len(value)}"
                )
            for v in value:
                check_int("steps_per_stage", v)
        else:
            check_int("steps_per_stage", value)

    @property
    def num_stages(self) -> int:
        """Halvings from teacher_steps to final_steps."""
        return int(math.log2(self.teacher_steps // self.final_steps))

    def student_steps(self, stage: int) -> int:
        """The steps of stage `stage`'s student (0-based): teacher_steps / 2^(stage + 1)."""
        return self.teacher_steps >> (stage + 1)

    def stage_lengths(self) -> tuple[int, ...]:
        s = self.steps_per_stage
        return s if isinstance(s, tuple) else (s,) * self.num_stages

    @property
    def steps(self) -> int:
        """Optimizer steps of the whole run, every stage."""
        return sum(self.stage_lengths())

    def stage_of(self, step: int) -> tuple[int, int]:
        """(stage, step within it) of the run's optimizer step `step` (0-based)."""
        for stage, length in enumerate(self.stage_lengths()):
            if step < length:
                return stage, step
            step -= length
        raise ValueError(f"step {step} is past the run's {self.steps} steps")

    def lr_at(self, step: int, length: int) -> float:
        """The learning rate of step `step` (0-based) of a stage of `length` steps."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_decay == "constant":
            return self.lr
        return self.lr * (1 - (step - self.warmup_steps) / max(1, length - self.warmup_steps))

    def ema_decay_at(self, step: int) -> float:
        """EMA decay after step `step` of a stage (0-based)."""
        return ema_warmup(self.ema_decay, step)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["adam_betas"] = list(self.adam_betas)
        if isinstance(self.steps_per_stage, tuple):
            d["steps_per_stage"] = list(self.steps_per_stage)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        check_known(cls, d, "distillation")
        try:
            return cls(**d)
        except TypeError as e:
            raise ValueError(f"invalid distillation setting: {e}") from None

    def replace(self, **changes: Any) -> DistillConfig:
        return dataclasses.replace(self, **changes)
