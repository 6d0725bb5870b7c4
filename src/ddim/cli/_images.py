"""Options shared by the latent-space subcommands (invert, reconstruct, interpolate, consistency)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ddim.cli._args import DEFAULT_MODEL, add_execution_options, device_arg, execution, int_at_least
from ddim.data import FITS, DataError, load_images, read_npz, to_model_range
from ddim.models import Model
from ddim.plan import sub_sequence
from ddim.schedule import SPACINGS


def add_model_options(p: argparse.ArgumentParser, batch_size: int = 64, model: str = DEFAULT_MODEL) -> None:
    """--model (default `model`), --spacing, --batch-size, --device, the execution options, --quiet."""
    p.add_argument("--model", default=model, help=f"built-in name or checkpoint path (default: {model})")
    p.add_argument(
        "--spacing", choices=SPACINGS, default="uniform", help="timestep sub-sequence (default: uniform)"
    )
    p.add_argument(
        "--batch-size",
        type=int_at_least(1),
        default=batch_size,
        help=f"images per forward pass (default: {batch_size})",
    )
    p.add_argument(
        "--device", type=device_arg, default="auto", help="cpu, cuda, cuda:N or auto (default: auto)"
    )
    add_execution_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_image_options(
    p: argparse.ArgumentParser, key: str = "x_test", required: bool = True, nargs: str | None = None
) -> None:
    """--images PATH, --key, --limit, --fit: where the real images come from."""
    p.add_argument(
        "--images",
        "--image",
        type=Path,
        required=required,
        nargs=nargs,
        help="an .npz (array --key, uint8 N×H×W[×C]), an image folder or one image file",
    )
    p.add_argument("--key", default=key, help=f"array name inside an .npz (default: {key})")
    p.add_argument("--limit", type=int_at_least(1), default=None, help="use the first N images only")
    p.add_argument(
        "--fit",
        choices=FITS,
        default="pad",
        help="fit images to the model's size: pad smaller ones, or resize + centre-crop (default: pad)",
    )


def sub_sequence_of(args: argparse.Namespace, model: Model) -> Tensor:
    """The descending sub-sequence τ of --steps and --spacing, resolved as `ddim.plan.resolve` does."""
    return sub_sequence(model.schedule, args.steps, args.spacing)


def model_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of invert/interpolate/edit/... given by add_model_options."""
    return {"progress": not args.quiet, "execution": execution(args)}


def read_images(
    args: argparse.Namespace, model: Model, path: Path | None = None, limit: int | None = None
) -> Tensor:
    """The images of --images (or `path`), fitted to the model: float32 (N, C, H, W) in [-1, 1].

    At most --limit images, or `limit` if it is smaller.
    """
    channels, size, _ = model.image_shape
    x = load_images(
        args.images if path is None else path,
        key=args.key,
        resolution=size,
        fit=args.fit,
        channels=channels,
        limit=min(filter(None, (args.limit, limit)), default=None),
        progress=not args.quiet,
    )
    return to_model_range(x)


def read_latents(path: Path) -> tuple[Tensor, Tensor | None]:
    """(latents (N, C, H, W) float32, their sampling timesteps or None) from `ddim invert`'s npz."""
    arrays = read_npz(path, ["latents"], optional=["timesteps"])
    latents, seq = arrays["latents"], arrays.get("timesteps")
    if not np.issubdtype(latents.dtype, np.floating):
        raise DataError(f"{path}: latents must be floating-point numbers, got dtype {latents.dtype}")
    x = torch.from_numpy(latents).float()  # float64 past float32's range becomes inf, refused below
    if x.ndim != 4 or len(x) == 0 or not torch.isfinite(x).all():
        raise DataError(f"{path}: latents must be finite, N×C×H×W with N ≥ 1, got shape {tuple(x.shape)}")
    if seq is not None and not np.issubdtype(seq.dtype, np.integer):
        raise DataError(f"{path}: timesteps must be integers, got dtype {seq.dtype}")
    return x, None if seq is None else torch.from_numpy(seq.astype(np.int64))
