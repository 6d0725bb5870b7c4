"""Training with the DDPM objective (Ho et al. 2020, Algorithm 1): ε-prediction, EMA, checkpoints.

    L = E_{x_0, t ~ U{0, …, T−1}, ε ~ N(0, I)} ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖²  (mean over pixels)

Randomness is a pure function of (seed, step): each epoch's data order, and each step's t, ε,
flips, dropout and label dropout. A resumed run therefore continues exactly as if it had never
stopped. A conditional run (classifier-free guidance, Ho & Salimans 2022) trains ε_θ(x_t, t, y)
with each label replaced by the null class with probability `class_dropout`, so the one
network is both conditional and unconditional.
The EMA of the weights is what sampling uses; it is saved as a native checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddim import distributed
from ddim.data import load_images, load_labels, to_model_range
from ddim.models import Model
from ddim.models.unet import UNet
from ddim.rng import seeded_generator
from ddim.runs import RunFolder
from ddim.schedule import NoiseSchedule
from ddim.train_config import TrainConfig
from ddim.warm_start import WarmStart, replay, warm_start

_DATA_STREAM, _STEP_STREAM, _INIT_STREAM, _LABEL_STREAM = 10, 11, 12, 13  # independent random streams


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, say); the last good checkpoint is left intact."""


@dataclass(frozen=True)
class TrainResult:
    step: int  # optimizer steps done
    checkpoint: Path  # the EMA model of the last checkpoint
    interrupted: bool  # stopped early by Ctrl-C or SIGTERM (after saving)


def batch_indices(num_images: int, batch_size: int, seed: int, step: int) -> Tensor:
    """The dataset indices of step `step`: epochs are seeded permutations, the last partial batch dropped."""
    per_epoch = num_images // batch_size
    epoch, j = divmod(step, per_epoch)
    order = torch.randperm(num_images, generator=seeded_generator(seed, epoch, _DATA_STREAM))
    return order[j * batch_size : (j + 1) * batch_size]


def diffusion_loss(
    net: nn.Module,
    x0: Tensor,
    t: Tensor,
    eps: Tensor,
    schedule: NoiseSchedule,
    autocast: bool,
    y: Tensor | None = None,
) -> Tensor:
    """‖ε − ε_θ(x_t, t[, y])‖², mean over all pixels of the batch; x0, eps (B, C, H, W), t and y (B,)."""
    x_t = schedule.q_sample(x0, t, eps)
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=autocast):
        pred = net(x_t, t) if y is None else net(x_t, t, y)
    return F.mse_loss(pred.float(), eps)


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """ema ← decay · ema + (1 − decay) · net, parameter by parameter; buffers are copied."""
    for e, p in zip(ema.parameters(), net.parameters(), strict=True):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), net.buffers(), strict=True):
        e.copy_(b)


def train_step(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    x0: Tensor,
    schedule: NoiseSchedule,
    config: TrainConfig,
    step: int,
    part: slice = slice(None),
    y: Tensor | None = None,
) -> tuple[float, float]:
    """One optimizer step; returns (this process's loss, gradient norm).

    x0: this process's share `part` of the global batch of `config.batch_size` images in [-1, 1];
    y: their class labels (conditional runs). t, ε, flips and label dropout are drawn for the
    whole global batch, so they do not depend on the number of processes; `net` may be wrapped
    in DistributedDataParallel, which averages the gradients.
    """
    gen = seeded_generator(config.seed, step, _STEP_STREAM)
    shape, device = (config.batch_size, *x0.shape[1:]), x0.device
    t = torch.randint(0, schedule.num_timesteps, shape[:1], generator=gen)[part].to(device)
    eps = torch.randn(shape, generator=gen)[part].to(device)
    if config.hflip:
        flip = (torch.rand(shape[:1], generator=gen) < 0.5)[part].to(device)[
            :, None, None, None
        ]  # (B, 1, 1, 1)
        x0 = torch.where(flip, x0.flip(-1), x0)
    if y is not None:  # classifier-free guidance: drop labels to the null class
        drop_gen = seeded_generator(config.seed, step, _LABEL_STREAM)
        drop = (torch.rand(shape[:1], generator=drop_gen) < config.class_dropout)[part].to(device)
        y = torch.where(drop, config.net.num_classes, y.to(device))
    dropout_seed = int(torch.randint(0, 2**62, (), generator=gen)) + distributed.rank()

    def loss() -> Tensor:
        return diffusion_loss(net, x0, t, eps, schedule, config.precision == "bf16", y)

    return optimizer_step(net, opt, loss, config.lr_at(step), config.grad_clip, dropout_seed)


def optimizer_step(
    net: nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable[[], Tensor], lr: float, grad_clip: float,
    dropout_seed: int,
) -> tuple[float, float]:  # fmt: skip
    """Set the learning rate, compute `loss_fn()` with torch's RNG (dropout) seeded by
    `dropout_seed`, backpropagate, clip the gradient norm to `grad_clip` (0: off) and step,
    unless the loss or the gradient is not finite. Returns (loss, gradient norm)."""
    device = next(net.parameters()).device
    for group in opt.param_groups:
        group["lr"] = lr
    with seeded_global_rng(dropout_seed, device):
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    grad_norm = nn.utils.clip_grad_norm_(net.parameters(), max_norm)
    if torch.isfinite(loss) and torch.isfinite(grad_norm):
        opt.step()
    return loss.item(), grad_norm.item()


def adamw(net: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float) -> torch.optim.AdamW:
    """The optimizer of every run: AdamW over the network's parameters."""
    return torch.optim.AdamW(net.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)


def check_finite(loss: float, grad_norm: float, step: int, checkpoint: Path | None) -> None:
    """Stop a run whose loss or gradient norm became NaN or inf at (1-based) `step`, naming the
    last good checkpoint, which is left intact."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    last = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written"
    raise TrainingError(f"loss became {loss} (gradient norm {grad_norm}) at step {step}; {last}")


@dataclass(frozen=True)
class _Session:
    """Everything one training process works with."""

    config: TrainConfig
    run: RunFolder
    data: Tensor  # uint8 (N, C, H, W): the whole dataset, on the CPU
    labels: Tensor | None  # int64 (N,) class labels of a conditional run, on the CPU
    net: nn.Module  # the network being trained
    forward: nn.Module  # net, or its DistributedDataParallel wrapper (averages the gradients)
    ema: nn.Module
    opt: torch.optim.Optimizer
    model: Model  # the EMA network with its schedule: what is sampled and saved


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    init: str | os.PathLike | None = None,
    init_step: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> TrainResult:
    """Train a U-Net with `config`, writing checkpoints, samples and logs into the run folder `out`.

    resume: continue the run in `out` from its latest checkpoint (only the settings in
    `train_config.RESUMABLE`, such as `steps`, may differ from the saved config).
    init: a warm start (`ddim.warm_start`): a new run whose network and EMA begin as this model's
    weights (anything `ddim.load` accepts), with a fresh optimizer; init_step: the step it starts
    at (default: the step the model records, when its schedule settings match; else 0).
    Under torchrun, each of the N processes takes batch_size / N images of every global batch
    (DDP averages the gradients) and only rank 0 writes; the result does not depend on N.
    """
    check_start(resume, init, init_step)
    with stop_signals() as stop:  # from the start: a signal while loading data is one line too
        how = _Start(resume, None if init is None else str(init), init_step)
        return _train(config, Path(out), how, torch.device(device), progress, stop)


def check_start(resume: bool, init: object, init_step: int | None) -> None:
    """Refuse a warm start (init) of a resumed run, and an init_step without init."""
    if init is not None and resume:
        raise ValueError(
            "init=MODEL starts a new run and resume=True continues one from its own checkpoints "
            "(a warm-started run too): give one of them"
        )
    if init_step is not None and init is None:
        raise ValueError("init_step=N applies to a warm start: give init=MODEL too")


@dataclass(frozen=True)
class _Start:
    resume: bool
    init: str | None
    init_step: int | None


def _train(
    config: TrainConfig, out: Path, how: _Start, device: torch.device, progress: bool, stop: StopRequest
) -> TrainResult:
    device = distributed.init(device)
    if config.batch_size % distributed.world_size():
        raise ValueError(
            f"batch_size={config.batch_size} must be divisible by the {distributed.world_size()} processes"
        )
    data = load_images(
        config.data, key=config.data_key, resolution=config.net.resolution, fit=config.fit,
        channels=config.net.in_channels, progress=progress and distributed.is_main(),
    )  # fmt: skip
    if len(data) < config.batch_size:
        raise ValueError(f"the dataset has {len(data)} images, fewer than batch_size={config.batch_size}")
    config, labels, names = _labels(config, len(data)) if config.conditional else (config, None, ())
    run = RunFolder(out)  # written only once the data is known to be good, and by rank 0 only
    if how.resume:
        config = _with_record(config, run.saved_config())
    run.check_resume(config) if how.resume else run.check_new()
    warm = _warm_start(config, run, how, names)
    config = warm.config if warm else config
    distributed.barrier()  # every process has checked before the folder changes
    write = distributed.is_main()
    if write:
        run.write_config(config)
    with seeded_global_rng(config.seed, device):
        net = UNet(config.net).to(device)
    if warm:
        net.load_state_dict(warm.weights)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = adamw(net, config.lr, config.adam_betas, config.weight_decay)
    start, wall = run.load_latest(net, ema, opt, truncate_log=write) if how.resume else (0, 0.0)
    if warm:  # a new run, or a resumed one that had no checkpoint yet (load_latest left all as built)
        start, wall = config.init_step, warm.wall_time_s
        if progress and write:
            tqdm.write(warm.note, file=sys.stderr)
    forward = nn.parallel.DistributedDataParallel(net) if distributed.world_size() > 1 else net
    shape = (config.net.in_channels, config.net.resolution, config.net.resolution)
    model = Model(ema, config.schedule(), shape, class_names=names)
    session = _Session(config, run, data, labels, net, forward, ema, opt, model)
    return _loop(session, start, wall, progress and distributed.is_main(), stop)


def _warm_start(config: TrainConfig, run: RunFolder, how: _Start, names: tuple[str, ...]) -> WarmStart | None:
    """The warm start of a new run given init=; or the one `config` records, for a new run of a
    saved config or a resumed run with no checkpoint yet (it starts again from the init model)."""
    if how.init is not None:
        return warm_start(config, how.init, how.init_step, names)
    if config.init and not (how.resume and run.steps()):
        return replay(config, names)
    return None


def _with_record(config: TrainConfig, saved: TrainConfig) -> TrainConfig:
    """A resumed run's config with the warm start its saved config records, if it gives none."""
    if config.init:
        return config
    return config.replace(init=saved.init, init_fingerprint=saved.init_fingerprint, init_step=saved.init_step)


def _labels(config: TrainConfig, num_images: int) -> tuple[TrainConfig, Tensor, tuple[str, ...]]:
    """A conditional run's labels (N,) and class names, and its config with net.num_classes set."""
    labels, names = load_labels(config.data, key=config.label_key)
    if len(labels) != num_images:
        raise ValueError(f"{config.data}: {len(labels)} class labels for {num_images} images")
    if config.net.num_classes not in (None, len(names)):
        raise ValueError(
            f"net.num_classes = {config.net.num_classes}, but {config.data} has {len(names)} classes"
        )
    return config.replace(net=dataclasses.replace(config.net, num_classes=len(names))), labels, names


def _loop(s: _Session, start: int, wall: float, progress: bool, stop_signal: StopRequest) -> TrainResult:
    config, main = s.config, distributed.is_main()
    checkpoint = s.run.latest_checkpoint()
    meter = Meter()
    bar = tqdm(total=config.steps, initial=start, disable=not progress, unit="step", desc="training")
    s.net.train()
    done, stop = start, False
    stop_signal.in_loop = True  # from here a signal stops the run after the step, with a checkpoint
    with bar:
        for step in range(start, config.steps):
            tick = time.perf_counter()
            loss, grad_norm, stop = _global_step(s, step, stop_signal.requested.is_set())
            check_finite(loss, grad_norm, step + 1, checkpoint)
            ema_update(s.ema, s.net, config.ema_decay_at(step))
            done, wall = step + 1, wall + time.perf_counter() - tick
            meter.add(loss, grad_norm, config.batch_size, time.perf_counter() - tick)
            bar.update(1)
            if main and (done % config.log_every == 0 or done == config.steps):
                record = meter.flush(done, config.lr_at(step), wall)
                s.run.log(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
            if main and config.sample_every and (done % config.sample_every == 0 or done == config.steps):
                s.run.save_sample_grid(f"step-{done:08d}", s.model, config.sample_n, config.sample_steps)
            if done % config.checkpoint_every == 0 or done == config.steps or stop:
                checkpoint = s.run.save_checkpoint(
                    done, s.net, s.ema, s.opt, s.model, config, wall, write=main
                )
            if stop:
                break
    if main:
        s.run.finish(checkpoint, complete=done == config.steps)
    distributed.barrier()
    return TrainResult(done, checkpoint, stop)


def _global_step(s: _Session, step: int, stop_requested: bool) -> tuple[float, float, bool]:
    """Step `step` on this process's share of the global batch: (the global batch's mean loss,
    the gradient norm, whether any process was asked to stop)."""
    shard = distributed.shard(s.config.batch_size)
    part = slice(shard.start, shard.stop)
    idx = batch_indices(len(s.data), s.config.batch_size, s.config.seed, step)[part]
    x0 = to_model_range(s.data[idx]).to(next(s.net.parameters()).device)
    y = None if s.labels is None else s.labels[idx]
    loss, grad_norm = train_step(s.forward, s.opt, x0, s.model.schedule, s.config, step, part, y)
    loss, stop = distributed.all_reduce_sum(
        [loss * len(shard) / s.config.batch_size, stop_requested], x0.device
    )
    return loss, grad_norm, stop > 0


class Meter:
    """Running means of loss and gradient norm, and throughput, between two log lines."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.norms: list[float] = []
        self.images, self.seconds = 0, 0.0

    def add(self, loss: float, grad_norm: float, images: int, seconds: float) -> None:
        self.losses.append(loss)
        self.norms.append(grad_norm)
        self.images += images
        self.seconds += seconds

    def flush(self, step: int, lr: float, wall: float) -> dict:
        record = {
            "step": step,
            "loss": sum(self.losses) / len(self.losses),
            "grad_norm": sum(self.norms) / len(self.norms),
            "lr": lr,
            "images_per_s": self.images / max(self.seconds, 1e-9),
            "wall_time_s": round(wall, 2),
        }
        self.__init__()
        return record


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (weight init, dropout) inside, and restore it afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class StopRequest:
    """Ctrl-C (SIGINT) and SIGTERM (kill, a cluster's pre-emption) during `train`. Before the
    training loop they raise KeyboardInterrupt at once: no step is done, so there is nothing to
    save (the run starts again from step 0). In the loop they set `requested` instead of stopping
    the process, so the loop finishes its step, saves a checkpoint and stops cleanly."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.in_loop = False

    def __call__(self, signum: int, frame: object) -> None:
        if not self.in_loop:
            raise KeyboardInterrupt
        self.requested.set()


@contextlib.contextmanager
def stop_signals() -> Iterator[StopRequest]:
    """A `StopRequest` handling SIGINT and SIGTERM inside (on the main thread; elsewhere it only waits
    to be set), the previous handlers restored afterwards."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
