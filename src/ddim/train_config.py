"""The training configuration: a frozen dataclass, read from TOML, written back as TOML.

The defaults are the recipe of the shipped MNIST model (docs/models/mnist.md), so
`ddim train --data mnist.npz --out runs/mnist` reproduces it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from ddim.data import FITS, Fit
from ddim.models.unet import UNetConfig
from ddim.schedule import NoiseSchedule

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BetaSchedule = Literal["linear", "cosine"]
LrDecay = Literal["constant", "cosine"]
TrainPrecision = Literal["fp32", "bf16"]

MNIST_NET = UNetConfig(
    resolution=28, in_channels=1, out_channels=1, ch=32, ch_mult=(1, 2, 4), num_res_blocks=1,
    attn_resolutions=(7,), dropout=0.0, norm_groups=8,
)  # fmt: skip
# Settings that may change when a run is resumed: they do not alter what is learned.
RESUMABLE = frozenset({"steps", "log_every", "checkpoint_every", "keep_checkpoints", "sample_every"})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (the run folder and device are given apart)."""

    KIND: ClassVar[str] = "training"
    RESUMABLE: ClassVar[frozenset[str]] = RESUMABLE

    data: str = ""  # an .npz (array `data_key`) or an image folder
    data_key: str = "x_train"
    conditional: bool = False  # class-conditional: labels from `label_key` or the folder's sub-folders
    label_key: str = "y_train"
    class_dropout: float = 0.1  # conditional runs: share of labels replaced by the null class
    fit: Fit = "pad"  # how images reach net.resolution: black padding, or resize + centre crop
    hflip: bool = False  # random horizontal flips (off for digits)
    net: UNetConfig = MNIST_NET
    beta_schedule: BetaSchedule = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    steps: int = 30000  # optimizer steps
    batch_size: int = 64
    lr: float = 1e-3  # peak learning rate (AdamW)
    warmup_steps: int = 200  # linear warm-up from 0
    lr_decay: LrDecay = "cosine"  # after warm-up: constant, or cosine down to min_lr at `steps`
    min_lr: float = 1e-5
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max global gradient norm (0: off)
    ema_decay: float = 0.999  # per step, with warm-up min(decay, (1 + k) / (10 + k))
    precision: TrainPrecision = "bf16"  # autocast of the forward pass; weights stay fp32
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    sample_every: int = 1000  # sample grids of the EMA model (0: off)
    sample_steps: int = 50
    sample_n: int = 64
    # A warm start (training.train's init=) records here the model the run began from, its
    # Model.fingerprint() and the step the run began at; set by train, not by hand.
    init: str = ""
    init_fingerprint: str = ""
    init_step: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            check_type(f.name, getattr(self, f.name), f.type)
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        check_choice("fit", self.fit, FITS)
        check_choice("beta_schedule", self.beta_schedule, get_args(BetaSchedule))
        check_choice("lr_decay", self.lr_decay, get_args(LrDecay))
        check_choice("precision", self.precision, get_args(TrainPrecision))
        for name in ("num_timesteps", "steps", "batch_size", "log_every", "checkpoint_every",
                     "keep_checkpoints", "sample_steps", "sample_n"):  # fmt: skip
            check_int(name, getattr(self, name))
        for name in ("warmup_steps", "sample_every", "seed", "init_step"):
            check_int(name, getattr(self, name), allow_zero=True)
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError(
                f"grad_clip and weight_decay must be >= 0, got {self.grad_clip}, {self.weight_decay}"
            )
        if not 0 <= self.class_dropout < 1:
            raise ValueError(f"class_dropout must be in [0, 1), got {self.class_dropout}")
        if self.net.num_classes is not None and not self.conditional:
            raise ValueError(
                f"net.num_classes = {self.net.num_classes} is for conditional runs: set conditional = true"
            )
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if self.net.in_channels != self.net.out_channels:
            raise ValueError(
                f"an ε-prediction net needs out_channels = in_channels, got "
                f"{self.net.out_channels} and {self.net.in_channels}"
            )
        if self.sample_steps > self.num_timesteps:
            raise ValueError(f"sample_steps must be <= num_timesteps, got {self.sample_steps}")
        if bool(self.init) != bool(self.init_fingerprint) or (self.init_step and not self.init):
            raise ValueError(
                "init, init_fingerprint and init_step record a warm start, set by training from "
                f"init=MODEL, not by hand (got {self.init!r}, {self.init_fingerprint!r}, {self.init_step})"
            )
        self.schedule()  # validates the β settings

    def schedule(self) -> NoiseSchedule:
        if self.beta_schedule == "cosine":
            return NoiseSchedule.cosine(self.num_timesteps)
        return NoiseSchedule.linear(self.num_timesteps, self.beta_start, self.beta_end)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based): warm-up, then constant or cosine.

        A run warm-started at init_step = s > 0 re-warms with its fresh optimizer: the rate of
        the schedule times min(1, (step − s + 1) / warmup_steps).
        """
        rate = self._scheduled_lr(step)
        if self.init_step and self.warmup_steps:
            return rate * min(1.0, (step - self.init_step + 1) / self.warmup_steps)
        return rate

    def _scheduled_lr(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_decay == "constant":
            return self.lr
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def ema_decay_at(self, step: int) -> float:
        """EMA decay after step `step`: short memory early on, so the average forgets the init."""
        return ema_warmup(self.ema_decay, step)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["adam_betas"] = list(self.adam_betas)
        d["net"] = {k: v for k, v in self.net.to_dict().items() if k != "type"}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        check_known(cls, d, "training")
        d = dict(d)
        if "net" in d and not isinstance(d["net"], dict):
            raise ValueError(f"net must be a table of U-Net settings, got {d['net']!r}")
        try:
            if "net" in d:
                d["net"] = UNetConfig.from_dict({**MNIST_NET.to_dict(), **d["net"]})
            return cls(**d)
        except TypeError as e:
            raise ValueError(f"invalid training setting: {e}") from None

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """The settings of a TOML (or JSON) config file as a dict, with a one-line error if unreadable."""
    path = Path(path)
    kind = "JSON" if path.suffix == ".json" else "TOML"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"cannot read config {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not valid {kind}: not UTF-8 text") from None
    try:
        settings = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid {kind}: {e}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path} must hold a table of settings, got a JSON {type(settings).__name__}")
    return settings


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """`net.ch=64` → (["net", "ch"], 64): the value in TOML syntax, or a bare string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()  # bare words: fit=resize
    return key.strip().split("."), parsed


def apply_assignments(settings: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """A copy of `settings` with each KEY=VALUE applied (dotted keys reach into tables)."""
    out = json.loads(json.dumps(settings))  # deep copy of plain data
    for text in assignments:
        keys, value = parse_assignment(text)
        table = out
        for k in keys[:-1]:
            table = table.setdefault(k, {})
            if not isinstance(table, dict):
                raise ValueError(f"{'.'.join(keys)}: {k} is not a table")
        table[keys[-1]] = value
    return out


def to_toml(settings: dict[str, Any]) -> str:
    """Plain settings (scalars, lists, one level of tables) as TOML text."""
    scalars = [f"{k} = {_toml_value(v)}" for k, v in settings.items() if not isinstance(v, dict)]
    tables = [
        f"\n[{k}]\n" + "\n".join(f"{kk} = {_toml_value(vv)}" for kk, vv in v.items())
        for k, v in settings.items()
        if isinstance(v, dict)
    ]
    return "\n".join(scalars) + "\n" + "\n".join(tables) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ValueError(f"cannot write {v!r} as TOML")


def check_known(cls: type, settings: dict[str, Any], what: str) -> None:
    """Refuse settings that are not fields of the dataclass `cls`, naming the known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(
            f"unknown {what} setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )


def ema_warmup(decay: float, step: int) -> float:
    """The EMA decay after step `step` (0-based): min(decay, (1 + k) / (10 + k)), a short memory
    early on, so the average forgets the weights it started from."""
    return min(decay, (1 + step) / (10 + step))


def check_type(name: str, value: Any, annotation: str) -> None:
    """Refuse a setting of the wrong type: floats must be finite numbers, flags booleans, text strings.

    Integers, choices and the net are checked by their own rules (check_int, check_choice, UNetConfig).
    """
    if annotation == "float" and not (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if annotation == "bool" and not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if annotation == "str" and not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def check_int(name: str, value: Any, allow_zero: bool = False) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be an integer >= {0 if allow_zero else 1}, got {value!r}")
