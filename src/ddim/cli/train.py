"""`ddim train`: train a U-Net with the DDPM objective into a run folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddim.cli._args import device_arg, int_at_least, output_folder
from ddim.distillation import DistillResult
from ddim.runs import RunFolder
from ddim.train_config import TrainConfig, apply_assignments, load_toml
from ddim.training import TrainResult, check_start, train

TRAIN_EXAMPLES = """examples:
  ddim train --data mnist.npz --out runs/mnist          the shipped MNIST recipe (the defaults)
  ddim train --data photos/ --out runs/cats --config cifar.toml --set net.resolution=64
  ddim train --out runs/mnist --resume --steps 40000    continue (and extend) a run
  ddim train --config c10.toml --data c10.npz --out runs/b --init runs/a/model.safetensors
                                                        a new run warm-started from a model's weights
  ddim train --data mnist.npz --out runs/x --dry-run    print the resolved config
  ddim train --data mnist.npz --out runs/mnist-cond --conditional   class-conditional (labels: y_train)

settings: the defaults, then --config FILE (TOML), then the flags below, then --set KEY=VALUE
(TOML values; dotted keys reach the net table, e.g. --set net.ch=64 --set 'net.ch_mult=[1,2,2]').
Ctrl-C (or SIGTERM) saves a checkpoint and exits (status 130); --resume continues exactly
where it stopped (a run stopped before its first checkpoint, from step 0; one stopped after its
last checkpoint writes model.safetensors).
--init MODEL is a warm start, not an exact resume: a new run whose network and EMA begin as
MODEL's weights, with a fresh optimizer (the learning rate re-warms over warmup_steps). Its step
count goes on from the step MODEL records when MODEL's run had this run's lr/EMA schedule
settings; --init-step N sets it (0: the schedule starts over).
"""

# flag → TrainConfig field, for the settings common enough to deserve a flag
_FLAGS = {"data": "data", "steps": "steps", "batch_size": "batch_size", "lr": "lr", "seed": "seed",
          "precision": "precision", "conditional": "conditional",
          "class_dropout": "class_dropout"}  # fmt: skip


def add(sub: argparse._SubParsersAction) -> None:
    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train a diffusion model (DDPM objective) into a run folder",
        description="Train a U-Net with the DDPM ε-prediction objective; EMA weights are what sampling uses.",
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", type=output_folder, required=True, help="the run folder (created; must not hold a run)"
    )
    p.add_argument("--data", default=None, help="an .npz with x_train, or an image folder")
    p.add_argument("--config", type=Path, default=None, help="a TOML file of settings")
    p.add_argument(
        "--steps", type=int_at_least(1), default=None, help=f"optimizer steps (default: {d.steps})"
    )
    p.add_argument(
        "--batch-size", type=int_at_least(1), default=None, help=f"images per step (default: {d.batch_size})"
    )
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default: {d.lr})")
    p.add_argument("--seed", type=int_at_least(0), default=None, help=f"run seed (default: {d.seed})")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help=f"forward autocast (default: {d.precision})",
    )
    p.add_argument(
        "--conditional",
        action="store_const",
        const=True,
        default=None,
        help="class-conditional, for classifier-free guidance: labels from the .npz array "
        f"{d.label_key} (--set label_key=...) or the image folder's sub-folder names",
    )
    p.add_argument(
        "--class-dropout",
        type=float,
        default=None,
        help=f"conditional runs: share of labels dropped to the null class (default: {d.class_dropout})",
    )
    add_run_options(p)
    p.add_argument(
        "--init",
        default=None,
        metavar="MODEL",
        help="warm start: a new run from MODEL's weights (a built-in name or a path; same architecture)",
    )
    p.add_argument(
        "--init-step",
        type=int_at_least(0),
        default=None,
        metavar="N",
        help="with --init: the step the run starts at (default: MODEL's recorded step if its "
        "schedule settings match, else 0)",
    )
    p.set_defaults(func=run)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """--set, --resume, --device, --quiet, --dry-run: what every run-folder command takes."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any setting, TOML value")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint"
    )
    p.add_argument(
        "--device", type=device_arg, default="auto", help="cpu, cuda, cuda:N or auto (default: auto)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults ← the run's saved config (--resume) or --config ← flags ← --set."""
    check_start(args.resume, args.init, args.init_step)
    config = TrainConfig.from_dict(settings(args, _FLAGS, RunFolder(args.out, TrainConfig)))
    if args.class_dropout is not None and not config.conditional:
        raise ValueError("--class-dropout applies to conditional runs only (add --conditional)")
    if not config.data:
        raise ValueError("no training data: give --data (an .npz or an image folder)")
    return config


def run(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    if args.dry_run:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    try:
        result = train(
            config, args.out, resume=args.resume, init=args.init, init_step=args.init_step,
            device=args.device, progress=not args.quiet,
        )  # fmt: skip
    except KeyboardInterrupt:  # before the first step: nothing to save
        return report_stop("train", "training", Path(args.out), None)
    if result.interrupted:
        return report_stop("train", "training", Path(args.out), result)
    print(f"trained {result.step} steps; EMA model: {Path(args.out) / 'model.safetensors'}")
    print(f"sample it with: ddim sample --model {Path(args.out) / 'model.safetensors'}")
    return 0


def settings(args: argparse.Namespace, flags: dict[str, str], run: RunFolder) -> dict:
    """A run's settings: the run's saved config (--resume) or --config, then the flags given
    (`flags`: argparse dest → setting), then each --set KEY=VALUE."""
    if args.resume:
        if args.config is not None:  # its settings would be silently ignored, or refused one by one
            raise ValueError("--config does not apply to --resume: the run's saved config is used")
        found = run.saved_config().to_dict()
    else:
        found = load_toml(args.config) if args.config else {}
    for flag, key in flags.items():
        if getattr(args, flag) is not None:
            found[key] = getattr(args, flag)
    return apply_assignments(found, args.set)


def report_stop(command: str, kind: str, out: Path, result: TrainResult | DistillResult | None) -> int | None:
    """Print how a run that stopped early goes on, and return exit status 130; None if it finished.

    result None: interrupted before its first step."""
    resume = f"continue with: ddim {command} --out {out} --resume"
    if result is None:
        print(f"interrupted before the first {kind} step: nothing needed saving")
        print(
            resume if (out / "config.toml").is_file() else "nothing was written: run the same command again"
        )
        return 130
    if result.interrupted:
        print(f"interrupted at step {result.step}; saved {result.checkpoint}")
        print(resume)
        return 130
    return None
