"""`ddim sample`: draw samples and write them as a grid, PNGs, an npz and a trajectory GIF."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import Tensor

from ddim import distributed, samplers
from ddim.cli._args import (
    DEFAULT_MODEL,
    add_execution_options,
    class_list,
    device_arg,
    eta_arg,
    execution,
    guidance_arg,
    int_at_least,
    output_file,
    output_folder,
    timestep_list,
    timesteps_of,
)
from ddim.cli._images import read_latents
from ddim.execution import Execution
from ddim.io import check_writable, save_samples, save_trajectory_gif, together
from ddim.loading import load
from ddim.models import Model
from ddim.plan import SamplePlan, resolve
from ddim.sampling import MAX_SAMPLES, target
from ddim.sampling import run as run_plan
from ddim.schedule import SPACINGS
from ddim.streaming import claim_folder, sample_to_folder

SAMPLE_EXAMPLES = """examples:
  ddim sample                                   16 images of the default model -> samples.png
  ddim sample --steps 10 --eta 0 --seed 3       deterministic DDIM, 10 network evaluations
  ddim sample --sampler ddpm --steps 1000       the DDPM ancestral sampler
  ddim sample --sampler unipc --spacing logsnr --steps 10  a higher-order ODE solver, 10 evaluations
  ddim sample --n 1000 --out-dir samples/ --npz samples.npz --quiet
  ddim sample -n 50000 --out-dir fid/ --quiet   streams; run it again to resume
  ddim sample --precision bf16 --channels-last --compile     faster network evaluations
  ddim sample --steps 20 --trajectory traj.gif  watch x_t and the predicted x0 denoise
  ddim sample --latents latents.npz             decode the latents of `ddim invert`
  ddim sample --model mnist-cond --class 0,1,2,3 --guidance 2   classifier-free guidance
"""


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="draw samples with DDIM (or DDPM) and save them",
        description="Draw samples with the generalized DDIM sampler (paper eq. 12).",
        epilog=SAMPLE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"built-in name or checkpoint path (default: {DEFAULT_MODEL})"
    )
    p.add_argument(
        "-n",
        "--n",
        type=int_at_least(1, MAX_SAMPLES),
        default=None,
        help="number of samples (default: 16, all --latents, or one per class of a --class list)",
    )
    p.add_argument(
        "--latents",
        type=Path,
        default=None,
        help="decode these x_T (an .npz from `ddim invert`) instead of seeded noise; "
        "its timesteps are used unless --steps/--timesteps is given",
    )
    p.add_argument(
        "--steps",
        type=int_at_least(1),
        default=None,
        help="sampling steps S (default: 50; a distilled student: the timesteps it was distilled for)",
    )
    p.add_argument(
        "--eta", type=eta_arg, default=None, help="noise level η in [0, 1] for --sampler ddim (default: 0)"
    )
    p.add_argument(
        "--sampler",
        choices=samplers.names(),
        default="ddim",
        help="; ".join(f"{s.name}: {s.summary}" for s in samplers.registry().values())
        + " (docs/samplers.md) (default: ddim)",
    )
    p.add_argument(
        "--spacing", choices=SPACINGS, default="uniform", help="timestep sub-sequence (default: uniform)"
    )
    p.add_argument(
        "--timesteps", type=timestep_list, default=None,
        help="explicit timesteps, e.g. 999,600,300,0, or @FILE from ddim timesteps --optimize",
    )  # fmt: skip
    p.add_argument(
        "--seed", type=int_at_least(0), default=0, help="sample i uses seed (SEED, i) (default: 0)"
    )
    p.add_argument(
        "--clip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clamp x̂0 to [-1, 1] (default: off; on for ddpm-large)",
    )
    p.add_argument(
        "--batch-size", type=int_at_least(1), default=64, help="samples per forward pass (default: 64)"
    )
    p.add_argument(
        "--device", type=device_arg, default="auto", help="cpu, cuda, cuda:N or auto (default: auto)"
    )
    add_execution_options(p)
    p.add_argument(
        "--out", type=output_file, default=None, help="grid PNG (default: samples.png unless --out-dir/--npz)"
    )
    p.add_argument(
        "--out-dir", type=output_folder, default=None,
        help="write one PNG per sample into this folder (000000.png, …); alone, each batch is written "
        "as it is made and a stopped run, started again, skips the finished batches",
    )  # fmt: skip
    p.add_argument(
        "--npz",
        type=output_file,
        default=None,
        help="write an .npz: images (uint8 NHWC) and x (float32 NCHW)",
    )
    p.add_argument("--nrow", type=int_at_least(1), default=None, help="grid columns (default: about √n)")
    p.add_argument(
        "--class",
        dest="classes",
        type=class_list,
        default=None,
        help="class-conditional models: one class for all samples or one per sample, by index or "
        "name (e.g. 7 or 0,1,2; default: unconditional)",
    )
    p.add_argument(
        "--guidance",
        type=guidance_arg,
        default=None,
        help="classifier-free guidance weight w in [0, 20]: 0 unconditional, 1 conditional (default: 1)",
    )
    p.add_argument(
        "--dynamic-threshold",
        type=float,
        default=None,
        metavar="P",
        help="Imagen's dynamic thresholding of x̂0 at percentile P in (0, 1], e.g. 0.995 (default: off)",
    )
    p.add_argument("--trajectory", type=output_file, default=None, help="GIF of x_t and x̂0 over the steps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--dry-run", action="store_true",
        help="check everything a run checks, print the resolved plan (timesteps, η, seed, ...), then exit",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = distributed.init(args.device)  # under torchrun: join the group, one GPU per rank
    if distributed.launched() and args.trajectory is not None:
        raise ValueError("--trajectory is for single-process runs (not under torchrun)")
    if args.steps is not None and args.timesteps is not None:
        raise ValueError("give --steps or --timesteps, not both (--timesteps sets the number of steps)")
    model = load(args.model)
    latents, stored = read_latents(args.latents) if args.latents is not None else (None, None)
    explicit = timesteps_of(args.timesteps)
    if explicit is None and args.steps is None and stored is not None:
        explicit = stored  # decode with the sub-sequence the latents were inverted with
    n = _count(args.n, latents, args.classes)
    how = execution(args, device)
    goal = target(model, how, noise=latents)
    plan = resolve(
        model, n, steps=args.steps, spacing=args.spacing, timesteps=explicit, sampler=args.sampler,
        eta=args.eta, clip=args.clip, seed=args.seed, classes=args.classes, guidance=args.guidance,
        dynamic_threshold=args.dynamic_threshold,
    )  # fmt: skip
    out = args.out if args.out is not None or args.out_dir or args.npz else check_writable("samples.png")
    main = distributed.is_main()
    if args.dry_run:  # everything a real run checks has been checked: print what it would run
        if main:
            settings = {
                "model": str(args.model), "n": n, "latents": None if latents is None else str(args.latents),
                **plan.view(), **how.view(), "processes": distributed.world_size(),
            }  # fmt: skip
            print(json.dumps(settings, indent=2))
        return 0
    if main and args.steps is not None and args.timesteps is None and plan.steps < args.steps:
        print(
            f"note: {args.spacing} spacing repeats timesteps at S={args.steps}; "
            f"using its {plan.steps} distinct steps"
        )
    shard = distributed.shard(n)  # this process's samples: all of them for one process
    progress = main and not args.quiet
    start = time.perf_counter()
    if out is None and args.npz is None and args.trajectory is None:  # --out-dir alone
        return _stream(model, args.out_dir, shard, latents, plan, how, progress, start)
    if args.out_dir is not None:  # the PNGs go where a streamed run may resume: refused if another's
        claim_folder(model, args.out_dir, plan, how, noise=latents)
    x, trajectory = torch.empty(0, *model.image_shape), None
    if len(shard):
        result = run_plan(
            goal, plan.rows(shard.start, shard.stop), how, len(shard),
            noise=None if latents is None else latents[shard.start : shard.stop], start_index=shard.start,
            progress=progress, return_trajectory=args.trajectory is not None,
        )  # fmt: skip
        x, trajectory = result if isinstance(result, tuple) else (result, None)
    with together():  # all outputs or none
        written = save_samples(x, out_dir=args.out_dir, first_index=shard.start) if args.out_dir else []
        if out is not None or args.npz is not None:
            x = distributed.gather_to_main(x)  # all n samples on rank 0, None elsewhere
        distributed.barrier()
        seconds = time.perf_counter() - start
        if not main:
            return 0
        written += save_samples(x, grid=out, npz=args.npz, nrow=args.nrow)
        if trajectory is not None:
            written.append(save_trajectory_gif(trajectory, args.trajectory, nrow=args.nrow))
    print(f"{n} samples, {plan.steps} steps, {seconds:.1f} s ({seconds / plan.steps:.3f} s/step)")
    for path in written:
        print(f"wrote {path}")
    return 0


def _stream(
    model: Model,
    out_dir: Path,
    shard: range,
    latents: Tensor | None,
    plan: SamplePlan,
    how: Execution,
    progress: bool,
    start: float,
) -> int:
    """Write each batch as soon as it is sampled; skip the batches a stopped run finished."""
    done = sample_to_folder(model, out_dir, shard, plan, how, noise=latents, progress=progress)
    sampled, skipped = distributed.all_reduce_sum([done.sampled, done.skipped], how.device)
    seconds, steps = time.perf_counter() - start, plan.steps
    if distributed.is_main():
        kept = f"; {skipped:.0f} finished earlier, kept" if skipped else ""
        print(f"{sampled:.0f} samples, {steps} steps, {seconds:.1f} s ({seconds / steps:.3f} s/step){kept}")
        print(f"wrote {out_dir}")
    return 0


def _count(n: int | None, latents: Tensor | None, classes: list[str] | None) -> int:
    """--n: 16 by default, or one per class of a --class list; with --latents, all or the first n."""
    if latents is None:
        return n if n is not None else len(classes) if classes and len(classes) > 1 else 16
    if n is not None and n > len(latents):
        raise ValueError(f"--n {n} asks for more samples than the {len(latents)} latents given")
    return len(latents) if n is None else n
