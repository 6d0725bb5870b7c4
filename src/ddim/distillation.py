"""Progressive distillation (Salimans & Ho, ICLR 2022, arXiv 2202.00512, Algorithm 2).

Stage k distils a teacher sampled by DDIM (η = 0) with 2S steps into a student that takes S.
The student starts as a copy of the teacher; for x_0 from the data, ε ~ N(0, I) and t drawn
uniformly from the student's grid, z_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, and the teacher takes two
DDIM steps t → t' → t'' (`teacher_two_steps`). The target x̃ is the x̂_0 for which ONE DDIM step
t → t'' lands on the teacher's z_t'' (Algorithm 2, with α = √ᾱ, σ = √(1 − ᾱ)):

    x̃ = (z_t'' − (σ_t''/σ_t) z_t) / (α_t'' − (σ_t''/σ_t) α_t);    at t'' = −1 (α = 1, σ = 0): x̃ = z_t''.

The loss is the x-space error with "truncated SNR" weighting (§4): max(ᾱ_t / (1 − ᾱ_t), 1) ·
‖x̃ − x̂_θ(z_t)‖². The student then teaches the next stage, down to `final_steps`.

Grids: the student of S steps samples on the "trailing" sub-sequence of S steps, τ_i =
round(T − i·T/S) − 1 (`schedule.timesteps`), and its teacher on the one of 2S steps. For S a
power of two, T/S is exact in binary floating point, so the 2S grid's even entries are exactly
the S grid: every student step (τ_i → τ_{i+1}) is two teacher steps through the odd entry
between them, and the last one goes to −1, clean data, through the teacher's last timestep. The
trailing grid starts at T − 1, the lowest SNR the model knows, where x_T ~ N(0, I) is closest to
the forward process (the paper puts its first step at SNR = 0 for this reason); the uniform
("leading") grid would start the 1-step student at t = 0.

Parameterization: students predict v (`student_prediction`, default "v", §4). With ε, x̂_0 =
(z_t − σ_t ε̂)/α_t multiplies the network's error by σ_t/α_t, about 160 at t = T − 1 of the
linear schedule; a one- or few-step student takes its first, largest step there. A v-student's
x̂_0 = α_t z_t − σ_t v̂ has no such factor at any t. An ε (or x0) teacher becomes a v-student by
training: the student network starts from the teacher's weights and is trained, from stage 1,
to the new target read as v. Wrapping the ε network in an exact ε → v conversion would start
the student as a perfect copy of the teacher, but its x̂_0 would be the ε-network's, with the
same 1/α_t amplification; the weights are kept as an initialisation instead.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddim import distributed
from ddim.data import load_images, to_model_range
from ddim.distill_config import DistillConfig
from ddim.io import atomic_write
from ddim.loading import load
from ddim.models import Model
from ddim.models.parameterization import Prediction, to_x0_eps
from ddim.rng import seeded_generator
from ddim.runs import RunFolder
from ddim.schedule import NoiseSchedule, timesteps
from ddim.training import (
    Meter,
    StopRequest,
    adamw,
    batch_indices,
    check_finite,
    ema_update,
    optimizer_step,
    stop_signals,
)
from ddim.update import ddim_step

_STEP_STREAM = 21  # per step: the grid index of each sample, ε, the dropout seed


@dataclass(frozen=True)
class StageGrid:
    """The student's steps t → t'' of one stage and the teacher's midpoints t', each (S,) int64."""

    t: Tensor  # the student's timesteps τ_1 > … > τ_S, from T − 1
    t_mid: Tensor  # the teacher's timestep between t and t_next
    t_next: Tensor  # where the student's step lands: t shifted by one, then −1 (clean)

    @property
    def student(self) -> list[int]:
        return self.t.tolist()

    @property
    def teacher(self) -> list[int]:
        return torch.stack([self.t, self.t_mid], 1).flatten().tolist()  # (2S,): τ_1, τ_1', τ_2, …


def stage_grid(num_timesteps: int, student_steps: int) -> StageGrid:
    """The grids of a stage whose student takes `student_steps` (a power of two) steps."""
    S = student_steps
    if S < 1 or S & (S - 1):
        raise ValueError(f"a student's steps must be a power of two, got {S}")
    if num_timesteps < 2 * S:
        raise ValueError(f"teacher_steps={2 * S} is more than the teacher's {num_timesteps} timesteps")
    teacher = timesteps(num_timesteps, 2 * S, "trailing")  # (2S,) descending
    student = timesteps(num_timesteps, S, "trailing")  # (S,)
    if teacher.numel() != 2 * S or not torch.equal(teacher[::2], student):  # exact for powers of two
        raise ValueError(f"the trailing grids of {2 * S} and {S} steps over T={num_timesteps} do not nest")
    t_next = torch.cat([student[1:], student.new_full((1,), -1)])
    return StageGrid(student, teacher[1::2], t_next)


def _alpha_bar(schedule: NoiseSchedule, t: Tensor, like: Tensor) -> Tensor:
    """ᾱ_t per sample, shaped (B, 1, …) to broadcast against `like`, in its dtype and device."""
    a = schedule.alpha_bar_at(t.cpu()).to(device=like.device, dtype=like.dtype)
    return a.view(-1, *([1] * (like.ndim - 1)))


def teacher_two_steps(
    teacher: Callable[[Tensor, Tensor], Tensor],
    z: Tensor,
    t: Tensor,
    t_mid: Tensor,
    t_next: Tensor,
    schedule: NoiseSchedule,
    prediction: Prediction,
) -> Tensor:
    """DDIM (η = 0, eq. 12) from z_t through t' to t'', each sample with its own t, t', t'' (B,)."""
    for a, b in ((t, t_mid), (t_mid, t_next)):
        out = teacher(z, a.to(z.device))
        x0, eps = to_x0_eps(out.to(z.dtype), z, _alpha_bar(schedule, a, z), prediction)
        z = ddim_step(x0, eps, _alpha_bar(schedule, b, z), 0.0)
    return z


def distillation_target(z_t: Tensor, z_next: Tensor, alpha_bar_t: Tensor, alpha_bar_next: Tensor) -> Tensor:
    """x̃ = (z_t'' − (σ_t''/σ_t) z_t) / (α_t'' − (σ_t''/σ_t) α_t): the x̂_0 for which one DDIM step
    t → t'' (η = 0) gives z_t''. ᾱ_t'' = 1 (t'' = −1, clean) gives x̃ = z_t''."""
    ratio = ((1 - alpha_bar_next) / (1 - alpha_bar_t)).sqrt()  # σ_t'' / σ_t
    return (z_next - ratio * z_t) / (alpha_bar_next.sqrt() - ratio * alpha_bar_t.sqrt())


def truncated_snr_weight(alpha_bar: Tensor) -> Tensor:
    """max(SNR_t, 1) with SNR_t = ᾱ_t / (1 − ᾱ_t) (Salimans & Ho 2022, §4)."""
    return (alpha_bar / (1 - alpha_bar)).clamp(min=1)


def distillation_loss(
    net: Callable[[Tensor, Tensor], Tensor],
    prediction: Prediction,
    teacher: Model,
    x0: Tensor,
    t: Tensor,
    eps: Tensor,
    grid: StageGrid,
    autocast: bool = False,
) -> Tensor:
    """max(SNR_t, 1) ‖x̃ − x̂_θ(z_t)‖² of the student `net` (predicting `prediction`), the mean over
    pixels and the batch. x0, eps (B, *shape); t (B,) indices into the stage's grid, not timesteps.
    """
    schedule, device = teacher.schedule, x0.device
    t_, t_mid, t_next = grid.t[t], grid.t_mid[t], grid.t_next[t]  # each (B,)
    a_t, a_next = _alpha_bar(schedule, t_, x0), _alpha_bar(schedule, t_next, x0)
    z_t = schedule.q_sample(x0, t_, eps)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        z_next = teacher_two_steps(teacher.net, z_t, t_, t_mid, t_next, schedule, teacher.prediction)
    target = distillation_target(z_t, z_next.float(), a_t, a_next)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        out = net(z_t, t_.to(device))
    x0_pred, _ = to_x0_eps(out.float(), z_t, a_t, prediction)
    mse = (x0_pred - target).pow(2).flatten(1).mean(1)  # (B,)
    return (truncated_snr_weight(a_t.flatten()) * mse).mean()


@dataclass(frozen=True)
class DistillResult:
    step: int  # optimizer steps done, all stages
    checkpoint: Path | None  # the EMA student of the last checkpoint
    students: tuple[Path, ...]  # RUN/students/S-step.safetensors of every finished stage
    interrupted: bool  # stopped early by Ctrl-C or SIGTERM (after saving)


@dataclass(frozen=True)
class _Stage:
    """One stage: its teacher and the student being trained (net), averaged (ema) and saved (model)."""

    index: int  # 0-based
    grid: StageGrid
    teacher: Model
    net: nn.Module
    ema: nn.Module
    opt: torch.optim.Optimizer
    model: Model  # the EMA student, with the timesteps it is distilled for in its info
    length: int  # optimizer steps


def distill(
    config: DistillConfig,
    out: str | Path,
    *,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> DistillResult:
    """Distil `config.teacher` into students of half the steps, stage by stage, in the run folder `out`.

    Each finished stage writes its student, an ordinary checkpoint, to RUN/students/S-step.safetensors
    (`ddim.load` it; `ddim.sample` uses its timesteps by default) and a sample grid; the last is also
    RUN/model.safetensors. resume: continue the run in `out` from its latest checkpoint (only the
    settings in `distill_config.RESUMABLE` may differ). Ctrl-C or SIGTERM saves and stops.
    """
    with stop_signals() as stop:
        return _distill(config, RunFolder(out, DistillConfig), resume, torch.device(device), progress, stop)


def _distill(
    config: DistillConfig,
    run: RunFolder,
    resume: bool,
    device: torch.device,
    progress: bool,
    stop: StopRequest,
) -> DistillResult:
    if distributed.launched():
        raise ValueError("distillation runs in one process (not under torchrun)")
    teacher = _check_teacher(load(config.teacher), config)
    C, H, _ = teacher.image_shape
    data = load_images(
        config.data, key=config.data_key, resolution=H, fit=config.fit, channels=C, progress=progress
    )
    if len(data) < config.batch_size:
        raise ValueError(f"the dataset has {len(data)} images, fewer than batch_size={config.batch_size}")
    run.check_resume(config) if resume else run.check_new()
    _check_same_teacher(run, config, teacher, resume)
    run.write_config(config)
    teacher.net.to(device).eval().requires_grad_(False)
    latest = (run.steps() or [0])[-1] if resume else 0
    students = _student_files(run, config, latest)
    name = f"teacher-{config.teacher_steps}-step"
    if not (run.path / "samples" / f"{name}.png").is_file():  # the first teacher, to compare with
        grid = stage_grid(teacher.schedule.num_timesteps, config.student_steps(0)).teacher
        run.save_sample_grid(name, teacher, config.sample_n, timesteps=grid)
    stage, wall = None, 0.0
    if latest < config.steps and config.stage_of(latest)[1] > 0:  # resumed inside a stage
        index = config.stage_of(latest)[0]
        stage = _start_stage(config, index, _teacher_of(run, config, index, teacher), device)
        _, wall = run.load_latest(stage.net, stage.ema, stage.opt)
    elif resume:  # at the end of a stage (the next starts from its student), or before any checkpoint
        wall = float(load(run.latest_checkpoint()).info.get("wall_time_s", 0.0)) if latest else 0.0
        run.truncate_log(latest)  # lines logged after the checkpoint, by a run killed without saving
    return _loop(config, run, data, teacher, stage, latest, wall, students, device, progress, stop)


def _loop(
    config: DistillConfig, run: RunFolder, data: Tensor, teacher: Model, stage: _Stage | None, start: int,
    wall: float, students: list[Path], device: torch.device, progress: bool, stop_signal: StopRequest,
) -> DistillResult:  # fmt: skip
    checkpoint, meter, done, stop = run.latest_checkpoint(), Meter(), start, False
    bar = tqdm(total=config.steps, initial=start, disable=not progress, unit="step", desc="distilling")
    stop_signal.in_loop = True  # from here a signal stops the run after the step, with a checkpoint
    with bar:
        for step in range(start, config.steps):
            index, k = config.stage_of(step)
            if stage is None or stage.index != index:  # a new stage: the last student teaches
                prev = stage.model if stage is not None else _teacher_of(run, config, index, teacher)
                stage = _start_stage(config, index, prev, device)
                S = config.student_steps(index)
                bar.set_description(f"stage {index + 1}/{config.num_stages}: {2 * S} -> {S} steps")
            tick = time.perf_counter()
            loss, grad_norm = _step(stage, config, data, step, k, device)
            check_finite(loss, grad_norm, step + 1, checkpoint)
            ema_update(stage.ema, stage.net, config.ema_decay_at(k))
            done, wall = step + 1, wall + time.perf_counter() - tick
            meter.add(loss, grad_norm, config.batch_size, time.perf_counter() - tick)
            bar.update(1)
            stop = stop_signal.requested.is_set()
            stage_end = k + 1 == stage.length
            if done % config.log_every == 0 or stage_end:
                record = meter.flush(done, config.lr_at(k, stage.length), wall)
                run.log({**record, "stage": index + 1, "student_steps": config.student_steps(index)})
                bar.set_postfix(loss=f"{record['loss']:.4g}")
            if config.sample_every and done % config.sample_every == 0 and not stage_end:
                run.save_sample_grid(f"step-{done:08d}", stage.model, config.sample_n)
            if done % config.checkpoint_every == 0 or stage_end or stop:
                checkpoint = run.save_checkpoint(
                    done, stage.net, stage.ema, stage.opt, stage.model, config, wall
                )
            if stage_end:
                students.append(_save_student(run, config, index, checkpoint))
                run.save_sample_grid(f"{config.student_steps(index)}-step", stage.model, config.sample_n)
            if stop:
                break
    run.finish(checkpoint, complete=done == config.steps, loss_label="max(SNR, 1)-weighted x-space MSE")
    return DistillResult(done, checkpoint, tuple(students), stop)


def _step(
    stage: _Stage, config: DistillConfig, data: Tensor, step: int, k: int, device: torch.device
) -> tuple[float, float]:
    """Optimizer step `step` of the run, step k of its stage: (loss, gradient norm)."""
    gen = seeded_generator(config.seed, step, _STEP_STREAM)
    shape = (config.batch_size, *stage.model.image_shape)
    t = torch.randint(0, stage.grid.t.numel(), shape[:1], generator=gen)  # (B,) indices into the grid
    eps = torch.randn(shape, generator=gen).to(device)
    dropout_seed = int(torch.randint(0, 2**62, (), generator=gen))
    x0 = to_model_range(data[batch_indices(len(data), config.batch_size, config.seed, step)]).to(device)
    prediction, autocast = config.student_prediction, config.precision == "bf16"

    def loss() -> Tensor:
        return distillation_loss(stage.net, prediction, stage.teacher, x0, t, eps, stage.grid, autocast)

    lr = config.lr_at(k, stage.length)
    return optimizer_step(stage.net, stage.opt, loss, lr, config.grad_clip, dropout_seed)


def _start_stage(config: DistillConfig, index: int, teacher: Model, device: torch.device) -> _Stage:
    """Stage `index`: the student, its average and a fresh optimizer, all starting from the teacher."""
    teacher.net.to(device).eval().requires_grad_(False)
    grid = stage_grid(teacher.schedule.num_timesteps, config.student_steps(index))
    net = copy.deepcopy(teacher.net).train().requires_grad_(True)
    ema = copy.deepcopy(teacher.net).eval()
    opt = adamw(net, config.lr, config.adam_betas, config.weight_decay)
    info = {"distilled": {"timesteps": grid.student, "sampler": "ddim", "eta": 0.0, "stage": index + 1,
                          "teacher": config.teacher, "teacher_timesteps": grid.teacher}}  # fmt: skip
    model = Model(ema, teacher.schedule, teacher.image_shape, config.student_prediction, info)
    return _Stage(index, grid, teacher, net, ema, opt, model, config.stage_lengths()[index])


def _check_teacher(teacher: Model, config: DistillConfig) -> Model:
    """Refuse a teacher the distillation cannot run, before anything is written."""
    _, H, W = teacher.image_shape
    if teacher.num_classes is not None:
        raise ValueError(
            f"teacher {config.teacher} is class-conditional ({teacher.num_classes} classes); "
            "distillation supports unconditional models only"
        )
    if H != W:
        raise ValueError(f"teacher {config.teacher} makes {H}x{W} images; distillation needs square ones")
    if not hasattr(getattr(teacher.net, "config", None), "to_dict") or not any(
        p.is_floating_point() for p in teacher.net.parameters()
    ):
        raise ValueError(f"teacher {config.teacher} has no trainable network to copy into a student")
    grid = stage_grid(teacher.schedule.num_timesteps, config.student_steps(0))
    own = teacher.default_timesteps
    if own is not None and list(own) != grid.teacher:
        raise ValueError(
            f"teacher {config.teacher} was distilled for timesteps {list(own)}, but "
            f"teacher_steps={config.teacher_steps} samples it on {grid.teacher}"
        )
    return teacher


def _check_same_teacher(run: RunFolder, config: DistillConfig, teacher: Model, resume: bool) -> None:
    """RUN/teacher.json records the teacher's fingerprint; a resumed run needs the same weights."""
    file, fingerprint = run.path / "teacher.json", teacher.fingerprint()
    if resume and file.is_file():
        saved = json.loads(file.read_text()).get("fingerprint")
        if saved != fingerprint:
            raise ValueError(
                f"teacher {config.teacher} is not the model {run.path} was started from "
                f"(weights fingerprint {fingerprint[:12]}, the run's {str(saved)[:12]})"
            )
        return
    record = json.dumps({"teacher": config.teacher, "fingerprint": fingerprint}) + "\n"
    atomic_write(file, lambda f: f.write(record.encode()))


def _student_file(run: RunFolder, config: DistillConfig, index: int) -> Path:
    return run.path / "students" / f"{config.student_steps(index)}-step.safetensors"


def _save_student(run: RunFolder, config: DistillConfig, index: int, checkpoint: Path) -> Path:
    """RUN/students/S-step.safetensors: a copy of the stage's last checkpoint (its EMA student)."""
    return atomic_write(_student_file(run, config, index), lambda f: f.write(checkpoint.read_bytes()))


def _student_files(run: RunFolder, config: DistillConfig, latest: int) -> list[Path]:
    """The students of the stages finished by step `latest`; one a stopped run had not yet copied
    from its stage's last checkpoint (the latest) is copied now."""
    files, end = [], 0
    for index, length in enumerate(config.stage_lengths()):
        end += length
        if end > latest:
            break
        file = _student_file(run, config, index)
        if not file.is_file():
            if end != latest or run.latest_checkpoint() is None:
                raise ValueError(
                    f"cannot resume {run.path}: the student of stage {index + 1}, {file}, is missing"
                )
            _save_student(run, config, index, run.latest_checkpoint())
        files.append(file)
    return files


def _teacher_of(run: RunFolder, config: DistillConfig, index: int, teacher: Model) -> Model:
    """The teacher of stage `index`: the model distilled, then the student of the stage before."""
    return teacher if index == 0 else load(_student_file(run, config, index - 1))
