"""The `ddim` command line: thin subcommands, each calling one library function.

Each subcommand lives in its own module with `add(subparsers)` and `run(args) -> exit code`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence

from ddim import __version__, distributed
from ddim.checkpoint import CheckpointError
from ddim.cli import (
    consistency,
    convert,
    distill,
    download,
    edit,
    evaluate,
    export,
    info,
    interpolate,
    invert,
    models,
    reconstruct,
    sample,
    serve,
    timesteps,
    train,
)
from ddim.cli._args import Parser, flag_words
from ddim.execution import CompileError
from ddim.training import TrainingError

SUBCOMMANDS = (
    sample, timesteps, invert, reconstruct, interpolate, edit, consistency, train, distill, evaluate, info,
    convert, serve, models, download, export,
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ddim",
        description="Denoising Diffusion Implicit Models: sample DDPM-trained models in 10-100x fewer steps.",
    )
    parser.add_argument("--version", action="version", version=f"ddim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for command in SUBCOMMANDS:
        command.add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():  # restores the caller's handler afterwards
            warnings.showwarning = _one_line(args.command)
            return args.func(args)
    except (CheckpointError, CompileError, TrainingError, ValueError, OSError) as e:
        print(f"ddim {args.command}: error: {flag_words(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddim {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()


def _one_line(command: str) -> Callable[..., None]:
    """A `warnings.showwarning` that prints `ddim COMMAND: warning: MESSAGE`, in the flags' words."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"ddim {command}: warning: {flag_words(str(message))}", file=sys.stderr)

    return show
