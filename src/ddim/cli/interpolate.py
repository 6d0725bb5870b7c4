"""`ddim interpolate`: slerp between two latents (of two seeds or two images), decoded with η = 0."""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import Tensor

from ddim.cli._args import int_at_least, int_list, output_file
from ddim.cli._images import add_image_options, add_model_options, model_options, read_images, sub_sequence_of
from ddim.interpolation import interpolate
from ddim.inversion import invert
from ddim.io import make_grid, save_gif, save_png, to_uint8, together
from ddim.loading import load
from ddim.models import Model
from ddim.sampling import seeded_latents

EXAMPLES = """examples:
  ddim interpolate --model mnist --seeds 0,1 --out strip.png --gif strip.gif
  ddim interpolate --model mnist --images mnist.npz --indices 3,7 --num 9 --out digits.png
  ddim interpolate --model mnist --images a.png b.png --out ab.png
"""


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "interpolate",
        help="spherical interpolation between two latents, decoded with DDIM η = 0",
        description="Interpolate between the latents x_T of two seeds (as `ddim sample --seed` draws "
        "them) or of two images (inverted first), along the great circle (slerp), and decode each "
        "point with DDIM η = 0 (paper §5.3).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seeds", type=int_list, default=None, help="two seeds A,B: the x_T of sample 0 of each")
    add_image_options(p, required=False, nargs="+")
    p.add_argument(
        "--indices", type=int_list, default=None, help="with one --images source: which two (default: 0,1)"
    )
    p.add_argument(
        "--num", type=int_at_least(2), default=11, help="images along the path, ends included (default: 11)"
    )
    p.add_argument("--steps", type=int_at_least(1), default=50, help="steps S (default: 50)")
    p.add_argument(
        "--out", type=output_file, default="interpolation.png", help="strip PNG (default: interpolation.png)"
    )
    p.add_argument("--gif", type=output_file, default=None, help="also write a GIF going there and back")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load(args.model)
    seq = sub_sequence_of(args, model)
    start = time.perf_counter()
    z0, z1 = _endpoints(args, model, seq)
    frames = interpolate(model, z0, z1, args.num, timesteps=seq, **model_options(args))
    seconds = time.perf_counter() - start
    images = to_uint8(frames)  # (num, H, W, C)
    scale = max(1, 56 // images.shape[1])
    with together():  # all outputs or none
        written = [save_png(make_grid(images, nrow=len(images), scale=scale), args.out)]
        if args.gif is not None:
            big = [make_grid(img[None], scale=scale * 2, pad=0) for img in images]
            written.append(save_gif([*big, *big[-2:0:-1]], args.gif, ms=120, hold_ms=600))
    print(f"{args.num} images, {len(seq)} steps, {seconds:.1f} s")
    for path in written:
        print(f"wrote {path}")
    return 0


def _endpoints(args: argparse.Namespace, model: Model, seq: Tensor) -> tuple[Tensor, Tensor]:
    """The two latents: of --seeds (no network call), or of --images (inverted with `seq`)."""
    if (args.seeds is None) == (args.images is None):
        raise ValueError("give either --seeds A,B or --images (one source with --indices, or two files)")
    if args.seeds is not None:
        if len(args.seeds) != 2 or min(args.seeds) < 0:
            raise ValueError(f"--seeds needs two non-negative integers A,B, got {args.seeds}")
        z = torch.cat([seeded_latents(model.image_shape, s, [0]) for s in args.seeds])  # (2, C, H, W)
        return z[0], z[1]
    if len(args.images) > 2:
        raise ValueError(f"--images takes one source or two image files, got {len(args.images)}")
    if len(args.images) == 2:
        if args.indices is not None:
            raise ValueError("--indices picks two images of one --images source; two files are used whole")
        x0 = torch.cat([read_images(args, model, path)[:1] for path in args.images])
    else:
        indices = [0, 1] if args.indices is None else args.indices
        if len(indices) != 2 or min(indices) < 0:
            raise ValueError(f"--indices needs two non-negative integers I,J, got {indices}")
        x = read_images(args, model, args.images[0], limit=max(indices) + 1)
        if len(x) <= max(indices):
            raise ValueError(f"--indices {indices}: {args.images[0]} holds only {len(x)} images")
        x0 = x[np.array(indices)]
    x_T = invert(model, x0, timesteps=seq, **model_options(args))
    return x_T[0], x_T[1]
