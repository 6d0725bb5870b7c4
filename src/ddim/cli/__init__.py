"""The `ddim` command line: thin subcommands, each calling one library function.

Each subcommand lives in its own module with `add(subparsers)` and `run(args) -> exit code`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ddim import __version__, distributed
from ddim.checkpoint import CheckpointError
from ddim.cli import (
    consistency,
    convert,
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
    sample, invert, reconstruct, interpolate, edit, consistency, train, evaluate, info, convert, serve,
    models, download, export, timesteps,
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
        return args.func(args)
    except (CheckpointError, CompileError, TrainingError, ValueError, OSError) as e:
        print(f"ddim {args.command}: error: {flag_words(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddim {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
