"""Options shared by the latent-space subcommands (invert, reconstruct, interpolate, consistency)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ddim.cli._args import DEFAULT_MODEL, add_execution_options, device_arg, execution_options, int_at_least
from ddim.data import FITS, DataError, load_images, to_model_range
from ddim.models import Model
from ddim.schedule import SPACINGS


def add_model_options(p: argparse.ArgumentParser, batch_size: int = 64) -> None:
    """--model, --spacing, --batch-size, --device, the execution options, --quiet."""
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"built-in name or checkpoint path (default: {DEFAULT_MODEL})"
    )
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


def model_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of invert/sample/interpolate given by add_model_options."""
    return {
        "batch_size": args.batch_size,
        "progress": not args.quiet,
        "device": args.device,
        **execution_options(args),
    }


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
    try:
        with np.load(path, allow_pickle=False) as data:
            if "latents" not in data.files:
                raise DataError(f"{path} has no array 'latents' (it has: {', '.join(data.files)})")
            latents = torch.from_numpy(data["latents"].astype(np.float32))
            seq = torch.from_numpy(data["timesteps"].astype(np.int64)) if "timesteps" in data.files else None
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz file: {e}") from None
    if latents.ndim != 4 or len(latents) == 0 or not torch.isfinite(latents).all():
        shape = tuple(latents.shape)
        raise DataError(f"{path}: latents must be finite, N×C×H×W with N ≥ 1, got shape {shape}")
    return latents, seq
