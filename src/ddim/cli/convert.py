"""`ddim convert`: write a diffusers or official DDPM/DDIM checkpoint in the native format."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddim.checkpoint import save
from ddim.cli._args import int_at_least, output_file
from ddim.convert import FORMATS, detect, import_model
from ddim.loading import builtin_names

CONVERT_EXAMPLES = """examples:
  ddim convert ddpm-cifar10-32/ --out cifar10.safetensors         a diffusers model or pipeline folder
  ddim convert model-790000.ckpt --out cifar10.safetensors        an official DDPM port (state_dict)
  ddim convert celeba/ckpt.pth --out celeba.safetensors           the DDIM repo's list (EMA entry)
  ddim convert my.ckpt --resolution 128 --out my.safetensors      an unknown architecture's image size
"""


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a diffusers or official DDPM/DDIM checkpoint to a native .safetensors file",
        description="Convert a diffusers UNet2DModel folder or an official DDPM/DDIM checkpoint "
        "(.ckpt/.pt/.pth, read with weights_only=True) into a native ddim checkpoint.",
        epilog=CONVERT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", help="a diffusers folder or an official checkpoint file")
    p.add_argument("--out", type=output_file, required=True, help="the .safetensors file to write")
    p.add_argument(
        "--resolution",
        type=int_at_least(1),
        default=None,
        help="image size, for official checkpoints of an unknown architecture (default: inferred)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out.name}")
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    if args.src in builtin_names() and not Path(args.src).exists():
        raise ValueError(f"{args.src} is a built-in model, in ddim's format already: use it by name")
    fmt = detect(args.src)
    model = import_model(args.src, resolution=args.resolution)
    save(model, out)  # atomic: a failure leaves any earlier file as it was
    print(f"read:    {args.src} ({FORMATS[fmt]})")
    for key in ("weights", "architecture", "schedule"):
        if key in model.info:
            print(f"  {key + ':':14}{model.info[key]}")
    print(f"wrote:   {out} ({model.num_parameters:,} parameters, image shape {model.image_shape}, "
          f"predicts {model.prediction})")  # fmt: skip
    return 0
