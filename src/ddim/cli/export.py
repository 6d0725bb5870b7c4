"""`ddim export`: a model out to diffusers (a pipeline folder) or ONNX (the network)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddim.export import FORMATS, to_diffusers, to_onnx
from ddim.io import check_writable
from ddim.loading import load

EXPORT_EXAMPLES = """examples:
  ddim export mnist --format diffusers --out mnist-diffusers/   then DDPMPipeline.from_pretrained(...)
  ddim export runs/c10/model.safetensors --format onnx --out c10.onnx
  ddim export ddpm-cifar10 --format onnx --out cifar10.onnx      a published model (downloaded first)

What each format keeps: docs/checkpoints.md ("Export").
"""


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to a diffusers pipeline folder or an ONNX file",
        description="Write a model (anything --model takes) for other tools: a diffusers DDPMPipeline "
        "folder (UNet2DModel + scheduler config), or the network as ONNX with a dynamic batch.",
        epilog=EXPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="a built-in name, a checkpoint path or a published model name")
    p.add_argument("--format", choices=tuple(FORMATS), required=True,
                   help="; ".join(f"{k}: {v}" for k, v in FORMATS.items()))  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="the folder (diffusers) or .onnx file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.format == "onnx" and out.suffix != ".onnx":
        raise ValueError(f"--out must end in .onnx for --format onnx, got {out.name}")
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    check_writable(out, folder=args.format == "diffusers")  # before any work
    model = load(args.model)
    if args.format == "diffusers":
        to_diffusers(model, out, overwrite=args.overwrite)
    else:
        to_onnx(model, out)
    print(f"wrote: {out} ({FORMATS[args.format]}; {model.num_parameters:,} parameters)")
    return 0
