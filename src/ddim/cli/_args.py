"""Argument types shared by the subcommands: range-checked, with one-line errors."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from ddim.execution import PRECISIONS, Execution
from ddim.guidance import MAX_GUIDANCE
from ddim.io import OutputError, check_writable
from ddim.timestep_search import read_timesteps

DEFAULT_MODEL = "mnist"  # the shipped model (docs/models/mnist.md)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, and refuses two outputs (`output_file`,
    `output_folder` options, given or by default) naming one path: one would overwrite the other."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.outputs: list[argparse.Action] = []

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if kwargs.get("type") in (output_file, output_folder):
            self.outputs.append(action)
        return action

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = super().parse_known_args(args, namespace)
        named: dict[Path, str] = {}
        for action in self.outputs:
            path = getattr(namespace, action.dest, None)
            if path is None:
                continue
            option = "/".join(action.option_strings)
            if (other := named.setdefault(Path(path).resolve(), option)) != option:
                self.error(f"{other} and {option} name the same path, {path}: one would overwrite the other")
        return namespace, extras

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def int_at_least(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An integer >= lo (and <= hi, if given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return value

    return parse


def eta_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def guidance_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number in [0, {MAX_GUIDANCE:g}], got {text!r}"
        ) from None
    if not 0.0 <= value <= MAX_GUIDANCE:
        raise argparse.ArgumentTypeError(f"must be in [0, {MAX_GUIDANCE:g}], got {text}")
    return value


def class_list(text: str) -> list[str]:
    """`7`, `0,1,2` or class names `cat,dog`: resolved against the model later."""
    items = [s.strip() for s in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"expected a class or comma-separated classes, got {text!r}")
    return items


def int_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def timestep_list(text: str) -> list[int] | Path:
    """--timesteps: comma-separated integers, or @FILE (what `ddim timesteps --optimize --out`
    writes), a Path that `timesteps_of` reads when the command runs."""
    return Path(text[1:]) if text.startswith("@") else int_list(text)


def timesteps_of(value: list[int] | Path | None) -> list[int] | None:
    """The timesteps --timesteps gave: its list, or those of its @FILE."""
    return read_timesteps(value) if isinstance(value, Path) else value


def device_arg(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"not a torch device: {text!r} (e.g. cpu, cuda, cuda:1, auto)"
        ) from None
    if not _available(device):
        raise argparse.ArgumentTypeError(f"device {text!r} is not available on this machine")
    return device


def _available(device: torch.device) -> bool:
    """Whether this machine has `device`: torch.cuda, torch.mps, … report their devices."""
    if device.type == "cpu":
        return True
    backend = getattr(torch, device.type, None)  # None for device types that run nothing (meta)
    try:
        return backend.is_available() and (device.index or 0) < backend.device_count()
    except AttributeError:
        return False


def output_file(text: str) -> Path:
    """A file the command writes: refused when the command line is read, before any work, if it
    cannot be written (see `io.check_writable`)."""
    return _writable(text, folder=False)


def output_folder(text: str) -> Path:
    """A folder the command writes into, checked like `output_file`."""
    return _writable(text, folder=True)


def _writable(text: str, folder: bool) -> Path:
    try:
        return check_writable(text, folder=folder)
    except OutputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_execution_options(p: argparse.ArgumentParser, prefix: str = "", network: str = "") -> None:
    """--precision, --channels-last, --compile: how the network runs (docs/performance.md).

    With a prefix (e.g. "features-", network "the feature extractor") the same three options for
    another network, each defaulting to that network's own choice and able to turn it off.
    """
    own = bool(prefix)
    what = network or "the network"
    p.add_argument(
        f"--{prefix}precision",
        choices=PRECISIONS,
        default=None if own else "fp32",
        help=f"{what}'s precision: bf16/fp16 autocast, weights stay fp32 (default: "
        + ("its own" if own else "fp32")
        + ")",
    )
    flag = {"action": argparse.BooleanOptionalAction, "default": None} if own else {"action": "store_true"}
    p.add_argument(f"--{prefix}channels-last", **flag, help=f"run {what} in channels-last memory layout")
    p.add_argument(
        f"--{prefix}compile",
        **flag,
        help=f"torch.compile {what} first (minutes for a large net; pays off on long runs)",
    )


def execution_options(args: argparse.Namespace, prefix: str = "") -> dict:
    """The keyword arguments of sample/invert/interpolate (or, with a prefix, load_extractor) given
    by add_execution_options."""
    key = prefix.replace("-", "_")
    return {name: getattr(args, key + name) for name in ("precision", "channels_last", "compile")}


def execution(args: argparse.Namespace, device: torch.device | None = None) -> Execution:
    """How the network runs: --device (or `device`, as `distributed.init` resolved it),
    --batch-size and the execution options."""
    device = args.device if device is None else device
    return Execution(device=device, batch_size=args.batch_size, **execution_options(args))


# The library's errors name its parameters; the command line says the flags (one table for all).
PARAMETER_FLAGS = {
    "resume=True": "--resume",
    "init_step=": "--init-step ",  # init_step=N, init=MODEL
    "init=": "--init ",
    "overwrite=True": "--overwrite",
    "larger steps=": "larger --steps",
    "another run folder": "another --out",
    "fit='resize'": "--fit resize",
    "limit=N": "--limit N",
    "method='inversion'": "--method inversion",
    "(classes=)": "(--class)",
    "resolution=R": "--resolution R",
    "weights=PATH": "--features-weights PATH",
    "leave out steps= and timesteps=": "leave out --steps and --timesteps",
}


def flag_words(message: str) -> str:
    """A library error as the command line says it: parameters named by their flags."""
    for parameter, flag in PARAMETER_FLAGS.items():
        message = message.replace(parameter, flag)
    return message
