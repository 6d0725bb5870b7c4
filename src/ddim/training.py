"""Training with the DDPM objective (Ho et al. 2020, Algorithm 1): ε-prediction, EMA, checkpoints.

    L = E_{x_0, t ~ U{0, …, T−1}, ε ~ N(0, I)} ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖²  (mean over pixels)

Randomness is a pure function of (seed, step): each epoch's data order, and each step's t, ε,
flips and dropout. A resumed run therefore continues exactly as if it had never stopped.
The EMA of the weights is what sampling uses; it is saved as a native checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddim.data import load_images, to_model_range
from ddim.models import Model
from ddim.models.unet import UNet
from ddim.rng import seeded_generator
from ddim.runs import RunFolder
from ddim.schedule import NoiseSchedule
from ddim.train_config import TrainConfig

_DATA_STREAM, _STEP_STREAM, _INIT_STREAM = 10, 11, 12  # keys of the independent random streams


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, say); the last good checkpoint is left intact."""


@dataclass(frozen=True)
class TrainResult:
    step: int  # optimizer steps done
    checkpoint: Path  # the EMA model of the last checkpoint
    interrupted: bool  # stopped early by Ctrl-C (after saving)


def batch_indices(num_images: int, batch_size: int, seed: int, step: int) -> Tensor:
    """The dataset indices of step `step`: epochs are seeded permutations, the last partial batch dropped."""
    per_epoch = num_images // batch_size
    epoch, j = divmod(step, per_epoch)
    order = torch.randperm(num_images, generator=seeded_generator(seed, epoch, _DATA_STREAM))
    return order[j * batch_size : (j + 1) * batch_size]


def diffusion_loss(
    net: nn.Module, x0: Tensor, t: Tensor, eps: Tensor, schedule: NoiseSchedule, autocast: bool
) -> Tensor:
    """‖ε − ε_θ(x_t, t)‖², mean over all pixels of the batch; x0, eps (B, C, H, W), t (B,)."""
    x_t = schedule.q_sample(x0, t, eps)
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=autocast):
        pred = net(x_t, t)
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
) -> tuple[float, float]:
    """One optimizer step on the batch x0 (B, C, H, W) in [-1, 1]; returns (loss, gradient norm)."""
    gen = seeded_generator(config.seed, step, _STEP_STREAM)
    b, device = x0.shape[0], x0.device
    t = torch.randint(0, schedule.num_timesteps, (b,), generator=gen).to(device)
    eps = torch.randn(x0.shape, generator=gen).to(device)
    if config.hflip:
        flip = (torch.rand(b, generator=gen) < 0.5).to(device)[:, None, None, None]  # (B, 1, 1, 1)
        x0 = torch.where(flip, x0.flip(-1), x0)
    for group in opt.param_groups:
        group["lr"] = config.lr_at(step)
    with _seeded_global_rng(int(torch.randint(0, 2**62, (), generator=gen)), device):  # dropout
        loss = diffusion_loss(net, x0, t, eps, schedule, config.precision == "bf16")
        opt.zero_grad(set_to_none=True)
        loss.backward()
    max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
    grad_norm = nn.utils.clip_grad_norm_(net.parameters(), max_norm)
    if torch.isfinite(loss) and torch.isfinite(grad_norm):
        opt.step()
    return loss.item(), grad_norm.item()


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> TrainResult:
    """Train a U-Net with `config`, writing checkpoints, samples and logs into the run folder `out`.

    resume: continue the run in `out` from its latest checkpoint (only the settings in
    `train_config.RESUMABLE`, such as `steps`, may differ from the saved config).
    """
    device = torch.device(device)
    data = load_images(
        config.data, key=config.data_key, resolution=config.net.resolution, fit=config.fit,
        channels=config.net.in_channels, progress=progress,
    )  # fmt: skip
    if len(data) < config.batch_size:
        raise ValueError(f"the dataset has {len(data)} images, fewer than batch_size={config.batch_size}")
    run = RunFolder(out)  # touched only once the data is known to be good
    run.check_config(config) if resume else run.create(config)
    schedule = config.schedule()
    with _seeded_global_rng(config.seed, device):
        net = UNet(config.net).to(device)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(
        net.parameters(), lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay
    )
    start, wall = run.load_latest(net, ema, opt) if resume else (0, 0.0)
    model = Model(ema, schedule, (config.net.in_channels, config.net.resolution, config.net.resolution))
    return _loop(config, run, data, net, ema, opt, model, start, wall, progress)


def _loop(
    config: TrainConfig,
    run: RunFolder,
    data: Tensor,
    net: nn.Module,
    ema: nn.Module,
    opt: torch.optim.Optimizer,
    model: Model,
    start: int,
    wall: float,
    progress: bool,
) -> TrainResult:
    device = next(net.parameters()).device
    checkpoint = run.latest_checkpoint()
    meter = _Meter()
    bar = tqdm(total=config.steps, initial=start, disable=not progress, unit="step", desc="training")
    net.train()
    done = start
    with _sigint_flag() as interrupted, bar:
        for step in range(start, config.steps):
            tick = time.perf_counter()
            idx = batch_indices(len(data), config.batch_size, config.seed, step)
            loss, grad_norm = train_step(
                net, opt, to_model_range(data[idx]).to(device), model.schedule, config, step
            )
            if not (torch.isfinite(torch.tensor(loss)) and torch.isfinite(torch.tensor(grad_norm))):
                last = (
                    f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written"
                )
                raise TrainingError(
                    f"loss became {loss} (gradient norm {grad_norm}) at step {step + 1}; {last}"
                )
            ema_update(ema, net, config.ema_decay_at(step))
            done, wall = step + 1, wall + time.perf_counter() - tick
            meter.add(loss, grad_norm, config.batch_size, time.perf_counter() - tick)
            bar.update(1)
            if done % config.log_every == 0 or done == config.steps:
                record = meter.flush(done, config.lr_at(step), wall)
                run.log(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
            if config.sample_every and (done % config.sample_every == 0 or done == config.steps):
                run.save_sample_grid(done, model, config)
            if done % config.checkpoint_every == 0 or done == config.steps or interrupted.is_set():
                checkpoint = run.save_checkpoint(done, net, ema, opt, model, config, wall)
            if interrupted.is_set():
                break
    run.finish(checkpoint, complete=done == config.steps)
    return TrainResult(done, checkpoint, interrupted.is_set())


class _Meter:
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
def _seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (weight init, dropout) inside, and restore it afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _sigint_flag() -> Iterator[threading.Event]:
    """An Event set by Ctrl-C (SIGINT) instead of raising, so the loop can save and stop cleanly."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda *_: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
