"""`ddim invert`: encode real images into their DDIM latents x_T (η = 0, run upward)."""

from __future__ import annotations

import argparse
import time

import numpy as np

from ddim.cli._args import int_at_least, output_file
from ddim.cli._images import add_image_options, add_model_options, model_options, read_images, sub_sequence_of
from ddim.inversion import invert
from ddim.io import save_npz
from ddim.loading import load

EXAMPLES = """examples:
  ddim invert --model mnist --images mnist.npz --limit 16 --steps 50 --out latents.npz
  ddim sample --model mnist --latents latents.npz --out decoded.png   decode them back
"""


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "invert",
        help="encode images into their DDIM latents x_T",
        description="Encode images into DDIM latents: the η = 0 update run from t = 0 up to the top "
        "of the sub-sequence (paper §4.3). `ddim sample --latents` decodes them.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_image_options(p)
    p.add_argument("--steps", type=int_at_least(1), default=50, help="steps S (default: 50)")
    p.add_argument(
        "--out",
        type=output_file,
        default="latents.npz",
        help="the latents x_T (.npz, for sample --latents; default: latents.npz)",
    )
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load(args.model)
    x0 = read_images(args, model)
    seq = sub_sequence_of(args, model)
    start = time.perf_counter()
    x_T = invert(model, x0, timesteps=seq, **model_options(args))
    seconds = time.perf_counter() - start
    path = save_npz(
        args.out, latents=x_T.numpy(), timesteps=seq.numpy(), model=np.array(str(args.model)),
    )  # fmt: skip
    print(f"{len(x_T)} images inverted with {len(seq)} steps in {seconds:.1f} s")
    print(f"wrote {path}: latents {tuple(x_T.shape)} and timesteps")
    print(f"decode them with: ddim sample --model {args.model} --latents {path}")
    return 0
