"""Files out: atomic writes, images in [-1, 1] to PNG grids, GIFs and npz."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import Tensor

if TYPE_CHECKING:
    from ddim.sampling import Trajectory


class OutputError(OSError):
    """An output path that cannot be written: the message names it and says why."""


def check_writable(path: str | os.PathLike, folder: bool = False) -> Path:
    """`path`, if a file (or, with `folder`, a folder) can be written there; else an OutputError.

    Refused: a folder where a file goes or the reverse, a parent that is a file, a folder without
    write permission. Commands call it on their outputs before any work, so nothing is computed
    to be lost, and no output is written by a run that then fails on another.
    """
    path = Path(path)
    try:
        if path.exists() and path.is_dir() != folder:
            is_a, needed = ("file", "folder") if folder else ("folder", "file")
            raise OutputError(f"cannot write {path}: it is a {is_a}, not a {needed}")
        where = path if folder and path.is_dir() else path.parent
        while not where.exists():  # the folder the missing ones will be created in
            where = where.parent
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        raise OutputError(f"cannot write {path}: {e.strerror}") from None  # e.g. a name too long
    if not where.is_dir():
        raise OutputError(f"cannot write {path}: {where} is a file, not a folder")
    if not os.access(where, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: no permission to write in {where}")
    return path


_DEFERRED: ContextVar[list[tuple[str, Path]] | None] = ContextVar("ddim_io_deferred", default=None)


@contextmanager
def together() -> Iterator[None]:
    """The files `atomic_write` writes inside the block go into place together when it ends, or,
    if it raises, none of them does (files of the same names stay as they were): a command that
    writes several outputs leaves all of them or none, even if the last one fails to write."""
    pending: list[tuple[str, Path]] = []
    token = _DEFERRED.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _DEFERRED.reset(token)
    for tmp, path in pending:
        os.replace(tmp, path)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file through `write(f)` into a temporary file beside it, then rename it into place
    (inside `together()`, when the block ends).

    A crash or an error leaves either the old file or the new one, never a partial file.
    Missing parent folders are created. A failure to write is an OutputError naming `path`.
    """
    path = check_writable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror}") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode of a new file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if (pending := _DEFERRED.get()) is None:
            os.replace(tmp, path)
        else:
            pending.append((tmp, path))
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, OutputError):  # e.g. a full disk
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def to_uint8(x: Tensor) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] → uint8 (N, H, W, C), clamped and rounded."""
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, scale: int = 1) -> np.ndarray:
    """uint8 (N, H, W, C) → one (H', W', C) grid, `nrow` images a row (default ≈ √N)."""
    n, h, w, c = images.shape
    nrow = max(1, min(n, nrow or math.ceil(math.sqrt(n))))
    rows = math.ceil(n / nrow)
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = img
    return grid


def _pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Save a uint8 (H, W, C) array (C = 1 or 3) as a PNG, atomically."""
    return atomic_write(path, lambda f: _pil(array).save(f, format="PNG"))


def save_gif(
    frames: Sequence[np.ndarray], path: str | os.PathLike, ms: int = 80, hold_ms: int = 1500
) -> Path:
    """Save uint8 (H, W, C) frames as a looping GIF; the last frame is held for `hold_ms`."""
    images = [_pil(f).convert("RGB") for f in frames]
    durations = [ms] * (len(images) - 1) + [hold_ms]

    def write(f: BinaryIO) -> None:
        images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)

    return atomic_write(path, write)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Save arrays to an uncompressed .npz, atomically."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def save_json(path: str | os.PathLike, data: object) -> Path:
    """Save `data` as indented JSON, atomically. Non-finite floats (e.g. the standard error of a
    single sample, NaN) are written as null: JSON has no NaN, and strict parsers refuse it."""
    text = json.dumps(_finite(data), indent=2, allow_nan=False)
    return atomic_write(path, lambda f: f.write(text.encode()))


def _finite(data: object) -> object:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    return data


def save_samples(
    x: Tensor,
    grid: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    npz: str | os.PathLike | None = None,
    nrow: int | None = None,
    first_index: int = 0,
) -> list[Path]:
    """Write samples (N, C, H, W) in [-1, 1]: a grid PNG, one PNG per sample, and/or an npz
    holding `images` (uint8 N×H×W×C) and `x` (the float32 samples). Returns the paths written.
    Per-sample PNGs are named by their index, first_index + i (000000.png, …)."""
    images = to_uint8(x)
    written = []
    if grid is not None:
        written.append(save_png(make_grid(images, nrow), grid))
    if out_dir is not None:
        for i, img in enumerate(images, start=first_index):
            save_png(img, sample_png(out_dir, i))
        written.append(Path(out_dir))
    if npz is not None:
        written.append(save_npz(npz, images=images, x=x.float().cpu().numpy()))
    return written


def sample_png(out_dir: str | os.PathLike, index: int) -> Path:
    """The file of sample `index` in a folder of samples: out_dir/000123.png."""
    return Path(out_dir) / f"{index:06d}.png"


def save_trajectory_gif(
    trajectory: Trajectory, path: str | os.PathLike, nrow: int | None = None, max_frames: int = 60
) -> Path:
    """A GIF of a `Trajectory`: x_t on the left, the predicted x̂_0 on the right, at most
    `max_frames` steps (evenly chosen) and the final samples; small images are enlarged."""
    if max_frames < 2:
        raise ValueError(f"max_frames must be >= 2, got {max_frames}")
    steps = trajectory.x0.shape[0]
    if steps <= max_frames:
        keep = list(range(steps))
    else:  # evenly spaced, first and last step included
        keep = sorted({round(i * (steps - 1) / (max_frames - 1)) for i in range(max_frames)})
    scale = max(1, 64 // trajectory.xt.shape[-1])
    frames = []
    for i in keep:
        left = make_grid(to_uint8(trajectory.xt[i]), nrow, scale=scale)
        right = make_grid(to_uint8(trajectory.x0[i]), nrow, scale=scale)
        frames.append(np.concatenate([left, np.zeros_like(left[:, :8]), right], axis=1))
    final = make_grid(to_uint8(trajectory.xt[-1]), nrow, scale=scale)
    frames.append(np.concatenate([final, np.zeros_like(final[:, :8]), final], axis=1))
    return save_gif(frames, path)
