"""A run's folder (training, or distillation: `ddim.distillation`): config, checkpoints, metrics
log, sample grids, loss curve.

    RUN/config.toml                           the resolved config (TrainConfig, DistillConfig)
    RUN/metrics.jsonl                         one JSON line per log interval
    RUN/checkpoints/step-00001000.safetensors the EMA model (native format: `ddim sample --model` it)
    RUN/checkpoints/step-00001000.state.pt    net, optimizer, step (torch.save; read with weights_only)
    RUN/samples/step-00001000.png             DDIM samples of the EMA model, fixed seeds
    RUN/model.safetensors                     the final EMA model
    RUN/loss.png                              the loss curve

Every file is written atomically; a checkpoint counts only once both of its files exist.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from ddim.checkpoint import check_weights, first_line, read_torch_file, save
from ddim.io import atomic_write, make_grid, save_png, to_uint8
from ddim.loading import load
from ddim.models import Model
from ddim.sampling import sample
from ddim.train_config import TrainConfig, load_toml, to_toml

_STATE_FORMAT, _STATE_VERSION = "ddim-train-state", 1
_STEP_FILE = re.compile(r"step-(\d+)\.safetensors$")


class RunConfig(Protocol):
    """What a run folder needs of its config: TrainConfig and DistillConfig have it."""

    KIND: ClassVar[str]  # "training": names the run in messages, keys the config in checkpoint info
    RESUMABLE: ClassVar[frozenset[str]]  # settings that may change when the run is resumed
    steps: int  # optimizer steps of the whole run
    keep_checkpoints: int

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any: ...


class RunFolder:
    def __init__(self, path: str | Path, kind: type[RunConfig] = TrainConfig) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.kind = kind

    # -- config ---------------------------------------------------------------------------
    def check_new(self) -> None:
        """Refuse a folder that already holds a run (nothing is ever overwritten)."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path} exists and is not a folder")
        if (self.path / "config.toml").exists() or self.steps():
            raise ValueError(
                f"{self.path} already holds a {self.kind.KIND} run; continue it with resume=True or choose "
                "another run folder"
            )

    def check_resume(self, config: RunConfig) -> None:
        """A resumed run may only change the settings in RESUMABLE, and needs a checkpoint before `steps`."""
        saved, resumable = self.saved_config().to_dict(), self.kind.RESUMABLE
        changed = [k for k, v in config.to_dict().items() if saved[k] != v and k not in resumable]
        if changed:
            k = changed[0]
            raise ValueError(
                f"cannot resume {self.path} with {k}={config.to_dict()[k]!r}: the run used {saved[k]!r} "
                f"(on resume only {', '.join(sorted(resumable))} may change)"
            )
        latest = self.steps()[-1] if self.steps() else 0  # none yet: it starts again from step 0
        finished = latest == config.steps and (self.path / "model.safetensors").is_file()
        if latest > config.steps or finished:  # at `steps` without the model: resuming writes it
            extend = " (give a larger steps= to extend the run)" if "steps" in resumable else ""
            raise ValueError(
                f"{self.path} is at step {latest}, and steps={config.steps}: nothing to train{extend}"
            )

    def write_config(self, config: RunConfig) -> None:
        atomic_write(self.path / "config.toml", lambda f: f.write(to_toml(config.to_dict()).encode()))

    def saved_config(self) -> Any:  # a self.kind
        file = self.path / "config.toml"
        if not file.is_file():
            raise ValueError(f"{self.path} holds no {self.kind.KIND} run to resume (no config.toml)")
        return self.kind.from_dict(load_toml(file))

    # -- checkpoints ----------------------------------------------------------------------
    def steps(self) -> list[int]:
        """Steps with a complete checkpoint (both files), ascending."""
        if not self.checkpoints.is_dir():
            return []
        found = (_STEP_FILE.search(p.name) for p in self.checkpoints.iterdir())
        return sorted(int(m[1]) for m in found if m and self._state_file(int(m[1])).is_file())

    def latest_checkpoint(self) -> Path | None:
        steps = self.steps()
        return self._model_file(steps[-1]) if steps else None

    def save_checkpoint(
        self, step: int, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, model: Model,
        config: RunConfig, wall: float, write: bool = True,
    ) -> Path:  # fmt: skip
        """Write the EMA model and the training state of `step`, then prune old checkpoints.

        The model's info keeps `model.info` and adds the config, the step and the wall time.
        Returns the EMA model's path; write=False only returns it (the other processes).
        """
        path = self._model_file(step)
        if not write:
            return path
        info = {**model.info, config.KIND: config.to_dict(), "step": step, "wall_time_s": round(wall, 1)}
        ema_model = Model(ema, model.schedule, model.image_shape, model.prediction, info, model.class_names)
        state = {
            "format": _STATE_FORMAT, "version": _STATE_VERSION, "step": step, "wall_time_s": wall,
            "net": net.state_dict(), "optimizer": opt.state_dict(),
        }  # fmt: skip
        atomic_write(self._state_file(step), lambda f: _torch_save(state, f))
        save(ema_model, path)
        for old in self.steps()[: -config.keep_checkpoints]:
            self._model_file(old).unlink(missing_ok=True)
            self._state_file(old).unlink(missing_ok=True)
        return path

    def load_latest(
        self, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, truncate_log: bool = True
    ) -> tuple[int, float]:
        """Restore net, EMA and optimizer from the latest checkpoint; returns (step, wall time).
        Without a checkpoint (a run stopped before its first), they stay as built: (0, 0.0).

        truncate_log drops the log lines written after that checkpoint (rank 0 does it).
        Every file is checked before it is used: a damaged or tampered one is a ValueError.
        """
        step = self.steps()[-1] if self.steps() else 0
        if truncate_log:
            self.truncate_log(step)
        if not step:
            return 0, 0.0
        file = self._state_file(step)
        state = read_torch_file(file)  # a pickle that would run code is refused, in one line
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT or state.get("step") != step:
            raise ValueError(f"{file} is not the ddim training state of step {step}")
        missing = [k for k in ("net", "optimizer", "wall_time_s") if k not in state]
        if missing or not isinstance(state["net"], dict) or not isinstance(state["wall_time_s"], float):
            raise ValueError(
                f"{file}: the training state is damaged (missing or wrong: {missing or 'types'})"
            )
        check_weights(state["net"], net.state_dict(), file)
        net.load_state_dict(state["net"])
        _load_optimizer(opt, state["optimizer"], file)
        saved = load(self._model_file(step)).net.state_dict()
        check_weights(saved, ema.state_dict(), self._model_file(step))
        ema.load_state_dict(saved)
        ema.to(next(net.parameters()).device)
        return step, state["wall_time_s"]

    def _model_file(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}.safetensors"

    def _state_file(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}.state.pt"

    # -- logs, samples, plots -------------------------------------------------------------
    def log(self, record: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        """The log's records; a last line cut short (a run killed while writing it) is dropped."""
        file = self.path / "metrics.jsonl"
        if not file.is_file():
            return []
        lines = [line for line in file.read_text().splitlines() if line.strip()]
        records = []
        for i, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                if i < len(lines):
                    raise ValueError(f"{file}: line {i} is not JSON ({e})") from None
                continue
            numbers = isinstance(record, dict) and all(
                isinstance(record.get(k), int | float) and not isinstance(record.get(k), bool)
                for k in ("step", "loss")
            )
            if not numbers:
                raise ValueError(f"{file}: line {i} is not a log record (it needs a numeric step and loss)")
            records.append(record)
        return records

    def truncate_log(self, step: int) -> None:
        """Drop log lines past `step` (written after the checkpoint a run resumes from)."""
        kept = "".join(json.dumps(r) + "\n" for r in self.records() if r["step"] <= step)
        atomic_write(self.path / "metrics.jsonl", lambda f: f.write(kept.encode()))

    def save_sample_grid(
        self, name: str, model: Model, n: int, steps: int | None = None, timesteps: list[int] | None = None
    ) -> Path:
        """RUN/samples/NAME.png: n samples of fixed seeds (DDIM, η = 0), with `steps` steps or these
        `timesteps` (neither: the model's default); a conditional model's in class order, one class
        a column."""
        device = next(model.net.parameters()).device
        k = model.num_classes
        classes = None if k is None else [i % k for i in range(n)]
        x = sample(model, n, steps=steps, timesteps=timesteps, seed=0, device=device, classes=classes)
        return save_png(make_grid(to_uint8(x), k), self.path / "samples" / f"{name}.png")

    def finish(self, checkpoint: Path | None, complete: bool, loss_label: str = "ε-prediction MSE") -> None:
        """Plot the loss curve; when training is complete, copy the last EMA model to model.safetensors.

        The model goes last: once it exists the run is complete, and a run killed before it
        writes it on --resume."""
        records = self.records()
        if records:
            plot_loss(records, self.path / "loss.png", loss_label)
        if complete and checkpoint is not None:
            atomic_write(self.path / "model.safetensors", lambda f: f.write(checkpoint.read_bytes()))


def _torch_save(obj: object, f) -> None:
    """torch.save into an open file; a failed write (a full disk) is the OSError that caused it.

    torch's zip writer reports a write that failed as a RuntimeError ("[enforce fail at
    inline_container.cc]") whose context is the OSError; atomic_write turns that into one line.
    """
    try:
        torch.save(obj, f)
    except RuntimeError as e:
        if isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise OSError(f"PyTorch could not write the file ({first_line(e)})") from None


def _load_optimizer(opt: torch.optim.Optimizer, saved: object, file: Path) -> None:
    """Restore `opt` from a saved state dict, refusing one whose tensors do not fit the parameters
    (they would fail at the first step, far from the file)."""
    try:
        opt.load_state_dict(saved)  # type: ignore[arg-type]
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as e:
        raise ValueError(f"{file}: the optimizer state does not fit this run ({first_line(e)})") from None
    for group in opt.param_groups:
        for p in group["params"]:
            for name, value in opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != p.shape:
                    raise ValueError(
                        f"{file}: the optimizer's {name} has shape {tuple(value.shape)} for a parameter "
                        f"of shape {tuple(p.shape)}"
                    )


def plot_loss(records: list[dict], path: Path, label: str = "ε-prediction MSE") -> Path:
    """The training loss (mean per log interval) against the step, log-scaled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    losses = [r["loss"] for r in records]
    window = max(1, len(losses) // 50)
    smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
              for i in range(len(losses))]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(steps, losses, color="0.75", lw=0.8, label="per log interval")
    ax.plot(steps, smooth, color="C0", lw=1.6, label=f"running mean of {window}")
    ax.set(xlabel="step", ylabel=label, yscale="log", title="training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return path
