"""`ddim edit`: edit real images towards a class with a class-conditional model."""

from __future__ import annotations

import argparse
import time

import torch

from ddim.cli._args import class_list, guidance_arg, int_at_least, output_file, output_folder
from ddim.cli._images import add_image_options, add_model_options, model_options, read_images
from ddim.editing import EDIT_GUIDANCE, EDIT_METHODS, edit, edit_method
from ddim.io import check_writable, make_grid, save_png, save_samples, to_uint8, together
from ddim.loading import load

EDIT_MODEL = "mnist-cond"  # the shipped class-conditional model (docs/models/mnist-cond.md)
EXAMPLES = """examples:
  ddim edit --image digit.png --to-class 8                        invert, decode as an 8 (mnist-cond)
  ddim edit --image digit.png --to-class 8 --strength 0.6         SDEdit
  ddim edit --image digit.png --to-class 8 --strength 0.6 --method inversion   invert to 0.6 T only
  ddim edit --images mnist.npz --limit 10 --to-class 0,1,2,3,4,5,6,7,8,9 --compare before-after.png
  ddim edit --model cond.safetensors --images pets/ --to-class cat     your own conditional model
"""


def _strength(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "edit",
        help="edit images towards a class (class-conditional models)",
        description="Edit real images towards a class: DDIM-invert them with the unconditional model "
        "(or --from-class) and decode with the target class and classifier-free guidance, or, with "
        "--strength s, noise them to t = s·T and denoise with the target class (SDEdit; with "
        "--method inversion, invert them to t = s·T instead).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_image_options(p)
    p.add_argument(
        "--to-class",
        type=class_list,
        required=True,
        help="target class, by index or name: one for all images or one per image (e.g. 8 or 1,2,3)",
    )
    p.add_argument(
        "--from-class",
        type=class_list,
        default=None,
        help="invert with the images' own class(es) instead of the unconditional model",
    )
    p.add_argument(
        "--guidance",
        type=guidance_arg,
        default=EDIT_GUIDANCE,
        help=f"classifier-free guidance weight w of the decoding, in [0, 20] (default: {EDIT_GUIDANCE:g})",
    )
    p.add_argument(
        "--strength",
        type=_strength,
        default=None,
        help="start the decoding at t = s·T, s in (0, 1]: noised there (SDEdit) or inverted up to "
        "there (--method inversion) (default: invert all the way, no strength)",
    )
    p.add_argument(
        "--method",
        choices=EDIT_METHODS,
        default=None,
        help="inversion or sdedit (default: sdedit with --strength, inversion without)",
    )
    p.add_argument("--steps", type=int_at_least(1), default=50, help="steps S (default: 50)")
    p.add_argument(
        "--seed", type=int_at_least(0), default=None, help="SDEdit noise of image i: (SEED, i) (default: 0)"
    )
    p.add_argument(
        "--out", type=output_file, default=None, help="grid PNG of the edits (default: edited.png)"
    )
    p.add_argument(
        "--out-dir", type=output_folder, default=None, help="one PNG per edited image (000000.png, …)"
    )
    p.add_argument("--npz", type=output_file, default=None, help="images (uint8 NHWC) and x (float32 NCHW)")
    p.add_argument(
        "--compare", type=output_file, default=None, help="PNG: the originals (top row) over the edits"
    )
    add_model_options(p, model=EDIT_MODEL)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    method = edit_method(args.method, args.strength, args.from_class)  # refused before loading anything
    if args.seed is not None and method != "sdedit":
        raise ValueError("--seed sets SDEdit's noise; inversion is deterministic and draws none")
    model = load(args.model)
    if model.num_classes is None:
        raise ValueError(f"--to-class needs a class-conditional model; {args.model} is unconditional")
    named = args.out is not None or args.out_dir or args.npz or args.compare
    out = args.out if named else check_writable("edited.png")  # checked before any work, as --out is
    x0 = read_images(args, model)
    start = time.perf_counter()
    x = edit(
        model, x0, args.to_class, guidance=args.guidance, strength=args.strength, method=args.method,
        from_class=args.from_class, steps=args.steps, spacing=args.spacing, seed=args.seed or 0,
        **model_options(args),
    )  # fmt: skip
    seconds = time.perf_counter() - start
    with together():  # all outputs or none
        written = save_samples(x, grid=out, out_dir=args.out_dir, npz=args.npz)
        if args.compare is not None:
            scale = max(1, 56 // x0.shape[-1])
            grid = make_grid(to_uint8(torch.cat([x0, x])), nrow=len(x0), scale=scale)
            written.append(save_png(grid, args.compare))
    how = {"inversion": "inversion", "sdedit": "SDEdit"}[method]
    how += "" if args.strength is None else f", strength {args.strength:g}"
    print(f"{len(x)} images edited ({how}, w = {args.guidance:g}, {args.steps} steps) in {seconds:.1f} s")
    for path in written:
        print(f"wrote {path}")
    return 0
