"""Warm starts: a new training run whose network and EMA begin as another model's weights.

A model file holds the EMA weights only, not the network being trained, Adam's moments or the
EMA's history, so a warm start is not an exact resume (`resume=True` of a run folder is): the
run trains a fresh optimizer from the model's weights. When the model records the step of its
own run and that run's learning-rate and EMA schedule equal this config's, the step count goes
on from there, so `lr_at` and `ema_decay_at` continue the original schedule; the fresh Adam's
rate re-warms over `warmup_steps` from the start step (TrainConfig.lr_at). The run's config
records the model, its fingerprint and the start step (init, init_fingerprint, init_step).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from ddim.checkpoint import check_weights
from ddim.loading import load
from ddim.models import Model
from ddim.models.unet import UNet, UNetConfig
from ddim.train_config import TrainConfig

# The settings lr_at and ema_decay_at read: the init model's run must have had these to continue
# its step count without an explicit init_step.
SCHEDULE_SETTINGS = ("steps", "lr", "warmup_steps", "lr_decay", "min_lr", "ema_decay")


@dataclass(frozen=True)
class WarmStart:
    config: TrainConfig  # the run's config, recording init, init_fingerprint and init_step
    weights: dict[str, Tensor]  # the init model's network state, floating point as float32
    wall_time_s: float  # cumulative wall time the run continues from (0 if the step count restarts)
    note: str  # one line: what was taken from the model


def warm_start(
    config: TrainConfig,
    init: str | os.PathLike,
    init_step: int | None = None,
    class_names: tuple[str, ...] = (),
) -> WarmStart:
    """Load `init` (anything `ddim.load` accepts) as the start of a run of `config`.

    The architecture, image shape, prediction, schedule and classes must match exactly (nothing
    is loaded partially). init_step: the step to start at (0: the schedule starts over); None
    takes the step the model records, if its run's schedule settings equal the config's.
    """
    if init_step is not None and (
        not isinstance(init_step, int) or isinstance(init_step, bool) or init_step < 0
    ):
        raise ValueError(f"init_step must be an integer >= 0, got {init_step!r}")
    model = load(init)
    weights = _check_compatible(model, config, str(init), class_names)
    start, how = _start_step(model, config, str(init), init_step)
    if start >= config.steps:
        raise ValueError(
            f"init={init} starts at step {start}, and steps={config.steps}: nothing to train "
            "(give a larger steps=)"
        )
    recorded = model.info.get("step")
    wall = model.info.get("wall_time_s") if start == recorded and start > 0 else None
    wall = float(wall) if isinstance(wall, int | float) and not isinstance(wall, bool) else 0.0
    fingerprint = model.fingerprint()
    config = config.replace(init=str(init), init_fingerprint=fingerprint, init_step=start)
    rewarm = f"; lr re-warms over steps {start}..{start + config.warmup_steps - 1}" if start else ""
    note = (
        f"warm start from {init} (fingerprint {fingerprint[:12]}): {how}; the run starts at step "
        f"{start}{rewarm}, wall time from {wall:.0f} s; network and EMA are its weights, the "
        "optimizer is fresh"
    )
    return WarmStart(config, weights, wall, note)


def replay(config: TrainConfig, class_names: tuple[str, ...] = ()) -> WarmStart:
    """The warm start `config` records (a run resumed before its first checkpoint, or a saved
    config run again): the same model, checked by its fingerprint, at the same step."""
    warm = warm_start(config, config.init, config.init_step, class_names)
    if warm.config.init_fingerprint != config.init_fingerprint:
        raise ValueError(
            f"init={config.init} is not the model this run started from (fingerprint "
            f"{warm.config.init_fingerprint[:12]}, the run records {config.init_fingerprint[:12]})"
        )
    return warm


def _check_compatible(
    model: Model, config: TrainConfig, init: str, class_names: tuple[str, ...]
) -> dict[str, Tensor]:
    """The model's network state (float32) if it is what `config` trains; else a one-line error
    naming the first thing that differs."""
    net_config = getattr(model.net, "config", None)
    if not isinstance(net_config, UNetConfig):
        raise ValueError(f"init={init} is a {type(model.net).__name__}, training builds a ddim UNet")
    ours, theirs = config.net.to_dict(), net_config.to_dict()
    for key in ours:
        if ours[key] != theirs.get(key):
            raise ValueError(
                f"init={init} has net.{key} = {theirs.get(key)!r}, the config has {ours[key]!r} "
                "(the architecture must match exactly)"
            )
    shape = (config.net.in_channels, config.net.resolution, config.net.resolution)
    if model.image_shape != shape:
        raise ValueError(f"init={init} has image shape {model.image_shape}, the config trains {shape}")
    if model.prediction != "eps":
        raise ValueError(f"init={init} predicts {model.prediction}, training trains eps")
    if not torch.equal(model.schedule.betas, config.schedule().betas):
        raise ValueError(
            f"init={init} has a different noise schedule ({_describe(model.schedule.betas)}) than "
            f"the config's ({_describe(config.schedule().betas)})"
        )
    if class_names and model.class_names and model.class_names != class_names:
        raise ValueError(
            f"init={init} has classes {list(model.class_names)}, the data has {list(class_names)}"
        )
    with torch.device("meta"):  # names and shapes only
        expected = UNet(config.net).state_dict()
    weights = model.net.state_dict()
    check_weights(weights, expected, f"init={init}")
    return {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in weights.items()}


def _start_step(model: Model, config: TrainConfig, init: str, init_step: int | None) -> tuple[int, str]:
    """(the step the run starts at, how it was chosen, in words)."""
    recorded, trained = model.info.get("step"), model.info.get("training")
    has_step = isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 0
    if init_step is not None:
        of = f" (it records step {recorded})" if has_step else ""
        return init_step, f"step {init_step} given by init_step={init_step}{of}"
    if not has_step:
        return 0, "it records no training step, so the schedule starts at step 0"
    ours = config.to_dict()
    theirs = trained if isinstance(trained, dict) else {}
    for key in SCHEDULE_SETTINGS:
        if theirs.get(key) != ours[key]:
            raise ValueError(
                f"init={init} was trained to step {recorded} with {key} = {theirs.get(key)!r}, this "
                f"run has {ours[key]!r}: give init_step={recorded} to go on from its step under this "
                "run's schedule, or init_step=0 to start the schedule over"
            )
    return recorded, f"its step {recorded} continues (its {', '.join(SCHEDULE_SETTINGS)} match)"


def _describe(betas: Tensor) -> str:
    return f"T = {len(betas)}, β from {betas[0].item():.6g} to {betas[-1].item():.6g}"
