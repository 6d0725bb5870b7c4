"""`ddim reconstruct`: encode and decode real images; the paper's Table 2 for this model."""

from __future__ import annotations

import argparse
import csv
import io

import torch

from ddim.cli._args import int_at_least, int_list, output_file
from ddim.cli._images import add_image_options, add_model_options, model_options, read_images
from ddim.inversion import PAPER_TABLE2, ReconstructionError, reconstruction_errors
from ddim.io import atomic_write, make_grid, save_json, save_png, to_uint8, together
from ddim.loading import load

EXAMPLES = """examples:
  ddim reconstruct --model mnist --images mnist.npz --limit 500 --steps 10,20,50,100
  ddim reconstruct --model mnist --images digits/ --steps 50 --out side-by-side.png --json table.json
"""
FIELDS = ("steps", "evaluations", "mse", "sem", "seconds", "paper_cifar10")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="encode then decode images: reconstruction error per S (paper Table 2)",
        description="Invert images to x_T and decode them back with DDIM η = 0, for each number of "
        "steps S; print the per-dimension MSE on [-1, 1] data beside the paper's CIFAR-10 Table 2.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_image_options(p)
    p.add_argument(
        "--steps", type=int_list, default=[10, 20, 50, 100], help="values of S (default: 10,20,50,100)"
    )
    p.add_argument(
        "--out", type=output_file, default=None, help="PNG: originals (top row) over each S's reconstructions"
    )
    p.add_argument("--show", type=int_at_least(1), default=8, help="images in the --out picture (default: 8)")
    p.add_argument("--csv", type=output_file, default=None, help="also write the table as CSV")
    p.add_argument("--json", type=output_file, default=None, help="also write the table and settings as JSON")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load(args.model)
    if not args.steps:
        raise ValueError("--steps needs at least one value of S")
    x0 = read_images(args, model)
    keep = args.show if args.out is not None else 0
    options = model_options(args)
    rows = reconstruction_errors(model, x0, args.steps, spacing=args.spacing, keep=keep, **options)
    source = f"{args.images}" + (f":{args.key}" if args.images.suffix == ".npz" else "")
    print(f"reconstruction MSE per dimension on [-1, 1] data, {len(x0)} images of {source}:")
    print(format_table(rows))
    written = []
    with together():  # all outputs or none
        if args.out is not None:
            originals = x0[:keep].unsqueeze(0)  # (1, keep, C, H, W)
            stacked = torch.cat([originals, torch.stack([r.examples for r in rows])])  # (1 + len(S), keep, …)
            grid = make_grid(to_uint8(stacked.flatten(0, 1)), nrow=keep, scale=max(1, 56 // x0.shape[-1]))
            written.append(save_png(grid, args.out))
        if args.csv is not None:
            written.append(atomic_write(args.csv, lambda f: f.write(to_csv(rows).encode())))
        if args.json is not None:
            report = {
                "model": str(args.model), "images": source, "n": len(x0), "spacing": args.spacing,
                "rows": [as_dict(r) for r in rows],
            }  # fmt: skip
            written.append(save_json(args.json, report))
    for path in written:
        print(f"wrote {path}")
    return 0


def as_dict(row: ReconstructionError) -> dict:
    values = (row.steps, row.evaluations, row.mse, row.sem, row.seconds, PAPER_TABLE2.get(row.steps))
    return dict(zip(FIELDS, values, strict=True))


def to_csv(rows: list[ReconstructionError]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(as_dict(r) for r in rows)
    return buffer.getvalue()


def format_table(rows: list[ReconstructionError]) -> str:
    lines = ["    S   NFE   MSE       ± s.e.    paper (CIFAR-10)   seconds"]
    for r in rows:
        paper = PAPER_TABLE2.get(r.steps)
        lines.append(
            f"{r.steps:5d} {r.evaluations:5d}   {r.mse:<9.4g} {r.sem:<9.2g} "
            f"{'—' if paper is None else paper:<18} {r.seconds:.1f}"
        )
    return "\n".join(lines)
