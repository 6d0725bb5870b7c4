"""`ddim consistency`: do samples from the same x_T agree across S? (paper §5.2, Fig. 5)."""

from __future__ import annotations

import argparse
from dataclasses import asdict

import numpy as np

from ddim.cli._args import eta_arg, int_at_least, int_list, output_file
from ddim.cli._images import add_model_options, model_options
from ddim.consistency import Consistency, consistency
from ddim.io import make_grid, save_json, save_png, to_uint8, together
from ddim.loading import load

EXAMPLES = """examples:
  ddim consistency --model mnist --n 8 --out consistency.png
  ddim consistency --model mnist --n 64 --steps 10,20,50,100 --reference 1000 --json consistency.json
"""


def eta_list(text: str) -> list[float]:
    return [eta_arg(s) for s in text.replace(" ", "").split(",") if s]


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "consistency",
        help="distance of S-step samples to the 1000-step samples of the same x_T, for η = 0 and 1",
        description="Sample the same latents x_T with S steps and with --reference steps, for each η; "
        "print the mean RMS pixel distance (on [-1, 1]) of each S's images to the reference images. "
        "With η = 0 they share their high-level features (paper §5.2); with η = 1 they do not.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--n", type=int_at_least(1), default=16, help="latents (default: 16)")
    p.add_argument(
        "--steps", type=int_list, default=[10, 20, 50, 100], help="values of S (default: 10,20,50,100)"
    )
    p.add_argument("--reference", type=int_at_least(1), default=1000, help="reference S (default: 1000)")
    p.add_argument("--etas", type=eta_list, default=[0.0, 1.0], help="values of η (default: 0,1)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="latent i is seed (SEED, i) (default: 0)")
    p.add_argument(
        "--out", type=output_file, default=None, help="PNG: per η, one row per S, the reference last"
    )
    p.add_argument("--json", type=output_file, default=None, help="also write the distances as JSON")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.steps or not args.etas:
        raise ValueError("--steps and --etas need at least one value each")
    model = load(args.model)
    result = consistency(
        model, args.n, args.steps, reference=args.reference, etas=args.etas, seed=args.seed,
        **model_options(args),
    )  # fmt: skip
    print(f"RMS pixel distance on [-1, 1] to the S = {args.reference} image of the same x_T ({args.n} x_T):")
    print(format_table(result))
    written = []
    with together():  # all outputs or none
        if args.out is not None:
            written.append(save_png(figure(result), args.out))
        if args.json is not None:
            report = {"model": str(args.model), "n": args.n, "seed": args.seed, "reference": args.reference,
                      "rows": [asdict(r) for r in result.rows]}  # fmt: skip
            written.append(save_json(args.json, report))
    for path in written:
        print(f"wrote {path}")
    return 0


def format_table(result: Consistency) -> str:
    lines = ["   eta      S   distance   ± s.e."]
    lines += [f"{r.eta:6.2f} {r.steps:6d}   {r.distance:<10.4f} {r.sem:.4f}" for r in result.rows]
    return "\n".join(lines)


def figure(result: Consistency) -> np.ndarray:
    """One grid per η (rows: each S, then the reference; columns: the latents), side by side."""
    grids = []
    for images in result.images.values():  # (rows, n, C, H, W)
        scale = max(1, 56 // images.shape[-1])
        grids.append(make_grid(to_uint8(images.flatten(0, 1)), nrow=images.shape[1], scale=scale))
    gap = np.full((grids[0].shape[0], 16, grids[0].shape[2]), 255, dtype=np.uint8)
    return np.concatenate([part for g in grids for part in (g, gap)][:-1], axis=1)
