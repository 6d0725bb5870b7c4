"""`ddim distill`: progressive distillation of a model into few-step students, in a run folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddim.cli._args import DEFAULT_MODEL, int_at_least, output_folder
from ddim.cli.train import add_run_options, report_stop, settings
from ddim.distill_config import DistillConfig
from ddim.distillation import distill
from ddim.runs import RunFolder

DISTILL_EXAMPLES = """examples:
  ddim distill --model mnist --data mnist.npz --out runs/mnist-distill     64 -> 32 -> ... -> 1 steps
  ddim distill --model mnist --data mnist.npz --out runs/d --teacher-steps 128 --final-steps 4
  ddim distill --model mnist --data mnist.npz --out runs/d --set 'steps_per_stage=[2000,2000,4000]' \\
      --teacher-steps 16 --final-steps 2                                   one length per stage
  ddim distill --out runs/mnist-distill --resume        continue where it stopped
  ddim sample --model runs/mnist-distill/students/4-step.safetensors       its own 4 timesteps

settings: the defaults, then --config FILE (TOML), then the flags below, then --set KEY=VALUE
(TOML values). Each stage halves the steps: its student learns one DDIM step (eta = 0) that
matches two of its teacher's, then teaches the next stage. Each finished stage writes
RUN/students/S-step.safetensors, an ordinary checkpoint that samples on its S timesteps by
default, and RUN/samples/S-step.png. Ctrl-C (or SIGTERM) saves a checkpoint and exits (status
130); --resume continues exactly where it stopped. docs/distillation.md explains the method.
"""

# flag → DistillConfig field
_FLAGS = {"model": "teacher", "data": "data", "teacher_steps": "teacher_steps", "final_steps": "final_steps",
          "steps_per_stage": "steps_per_stage", "batch_size": "batch_size", "lr": "lr", "seed": "seed",
          "precision": "precision"}  # fmt: skip


def add(sub: argparse._SubParsersAction) -> None:
    d = DistillConfig()
    p = sub.add_parser(
        "distill",
        help="distil a model into few-step students (progressive distillation) in a run folder",
        description="Progressive distillation (Salimans & Ho 2022): halve a model's DDIM steps per stage.",
        epilog=DISTILL_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", type=output_folder, required=True, help="the run folder (created; must not hold a run)"
    )
    p.add_argument(
        "--model",
        default=None,
        help=f"the teacher: built-in name or checkpoint path (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--data", default=None, help="training images: an .npz with x_train, or an image folder")
    p.add_argument("--config", type=Path, default=None, help="a TOML file of settings")
    p.add_argument(
        "--teacher-steps",
        type=int_at_least(2),
        default=None,
        help=f"DDIM steps of the first teacher, a power of two (default: {d.teacher_steps})",
    )
    p.add_argument(
        "--final-steps",
        type=int_at_least(1),
        default=None,
        help=f"steps of the last student, a power of two (default: {d.final_steps})",
    )
    p.add_argument(
        "--steps-per-stage",
        type=int_at_least(1),
        default=None,
        help=f"optimizer steps of each stage (default: {d.steps_per_stage}; one per stage: --set)",
    )
    p.add_argument(
        "--batch-size", type=int_at_least(1), default=None, help=f"images per step (default: {d.batch_size})"
    )
    p.add_argument(
        "--lr", type=float, default=None, help=f"peak learning rate of each stage (default: {d.lr})"
    )
    p.add_argument("--seed", type=int_at_least(0), default=None, help=f"run seed (default: {d.seed})")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help=f"forward autocast of teacher and student (default: {d.precision})",
    )
    add_run_options(p)
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> DistillConfig:
    """Defaults ← the run's saved config (--resume) or --config ← flags ← --set."""
    config = DistillConfig.from_dict(settings(args, _FLAGS, RunFolder(args.out, DistillConfig)))
    if not config.data:
        raise ValueError("no training data: give --data (an .npz or an image folder)")
    return config


def run(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    if args.dry_run:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    out = Path(args.out)
    try:
        result = distill(config, out, resume=args.resume, device=args.device, progress=not args.quiet)
    except KeyboardInterrupt:  # before the first step: nothing to save
        return report_stop("distill", "distillation", out, None)
    stopped = report_stop("distill", "distillation", out, result) if result.interrupted else None
    for path in result.students:
        print(f"student: {path}")
    if stopped is not None:
        return stopped
    print(f"distilled {result.step} steps; last student: {out / 'model.safetensors'}")
    print(f"sample it with: ddim sample --model {out / 'model.safetensors'}")
    return 0
