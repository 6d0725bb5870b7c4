"""Image datasets in: `.npz` arrays, image folders or single image files, as uint8 tensors.

Class labels, for conditional models, come from an integer array of the `.npz` (`y_train`) or
from an image folder's sub-folder names (`digits/3/a.png` is class "3"; names sorted).

Images are kept as uint8 (N, C, H, W) — compact in memory — and scaled to the model's range
[-1, 1] per batch with `to_model_range`. Fitting to a model resolution: "pad" centres smaller
images on a black square (MNIST 28 → 32), "resize" scales the shorter side and centre-crops.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from tqdm.auto import tqdm

Fit = Literal["pad", "resize"]
FITS: tuple[str, ...] = get_args(Fit)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class DataError(ValueError):
    """A dataset that is missing, unreadable or not images of a usable shape."""


def load_images(
    path: str | os.PathLike,
    *,
    key: str = "x_train",
    resolution: int | None = None,
    fit: Fit = "pad",
    channels: int | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> Tensor:
    """Images as uint8 (N, C, H, W) from an `.npz` (array `key`, N×H×W or N×H×W×C uint8), a
    folder (searched recursively for PNG/JPEG/BMP/WebP, sorted by path) or one image file.

    resolution: fit every image to resolution × resolution (None: keep the data's own size,
    which must then be square and equal across images). channels: 1 or 3 (None: as stored;
    a folder is grayscale only if all its images are). limit: keep the first `limit` images.
    """
    if fit not in FITS:
        raise DataError(f"unknown fit {fit!r}; choose one of {', '.join(FITS)}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive integer, got {limit}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such dataset: {path}")
    if path.is_dir():
        x = _load_folder(path, resolution, fit, channels, limit, progress)
    elif path.suffix.lower() == ".npz":
        x = _load_npz(path, key, limit)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        x = _load_folder_files([path], resolution, fit, channels, progress=False)
    else:
        raise DataError(f"{path}: not an .npz, an image folder or an image ({', '.join(IMAGE_SUFFIXES)})")
    x = _set_channels(x, channels, path)
    return x if resolution is None else fit_images(x, resolution, fit)


def to_model_range(x: Tensor) -> Tensor:
    """uint8 images → float32 in [-1, 1] (0 → -1, 255 → 1)."""
    return x.float() / 127.5 - 1.0


def fit_images(x: Tensor, resolution: int, fit: Fit = "pad") -> Tensor:
    """uint8 (N, C, H, W) → (N, C, resolution, resolution) by black padding or resize + crop."""
    if resolution < 1:
        raise DataError(f"resolution must be a positive integer, got {resolution}")
    h, w = x.shape[-2:]
    if (h, w) == (resolution, resolution):
        return x
    if fit == "pad":
        if h > resolution or w > resolution:
            raise DataError(
                f"images of {h}×{w} do not fit in {resolution}×{resolution} by padding; use fit='resize'"
            )
        top, left = (resolution - h) // 2, (resolution - w) // 2
        padding = (left, resolution - w - left, top, resolution - h - top)
        return torch.nn.functional.pad(x, padding, value=0)
    return torch.stack([_resize_crop(img, resolution) for img in x])


def _resize_crop(img: Tensor, size: int) -> Tensor:
    """One uint8 (C, H, W) image: shorter side → size (bicubic, Pillow), then centre crop."""
    array = img.permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    scale = size / min(pil.size)
    w, h = max(size, round(pil.width * scale)), max(size, round(pil.height * scale))
    pil = pil.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    out = np.asarray(pil.crop((left, top, left + size, top + size)))
    return torch.from_numpy(out.reshape(size, size, -1).copy()).permute(2, 0, 1)


def read_npz(
    path: str | os.PathLike,
    keys: Sequence[str],
    optional: Sequence[str] = (),
    limit: int | None = None,
) -> dict[str, np.ndarray]:
    """The arrays `keys` of an .npz, and those of `optional` it has, with one-line errors for
    a file that is missing, unreadable, not a zip archive (e.g. truncated), damaged or lacks a key.

    limit: read only the first `limit` entries of each array (a compressed array is
    decompressed only that far). Each array's header is checked before its data is read: it
    must declare no more bytes than the archive holds for it, nor than this machine's memory,
    and no Python objects (they would be unpickled).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            is_zip = zipfile.is_zipfile(f)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    if not is_zip:
        raise DataError(f"{path} is not a readable .npz file (not a zip archive: truncated? another format?)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {n.removesuffix(".npy"): n for n in archive.namelist() if n.endswith(".npy")}
            missing = next((k for k in keys if k not in members), None)
            if missing is not None:
                raise DataError(f"{path} has no array {missing!r} (it has: {', '.join(members)})")
            return {
                k: _read_member(archive, members[k], limit, f"{path}:{k}")
                for k in (*keys, *optional)
                if k in members
            }
    except DataError:
        raise
    # Not a blanket default: a damaged archive fails in zipfile, zlib and numpy's header parser
    # with many exception types (BadZipFile, zlib.error, EOFError, ValueError, struct.error, ...).
    except Exception as e:
        raise DataError(f"{path} is not a readable .npz file: {e}") from None


def _read_member(archive: zipfile.ZipFile, member: str, limit: int | None, where: str) -> np.ndarray:
    """One .npy member of an open .npz, its header checked before any data is read."""
    size = archive.getinfo(member).file_size  # the archive's own claim, bounded again by reading
    with archive.open(member) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else (
            np.lib.format.read_array_header_2_0
        )  # fmt: skip
        shape, fortran, dtype = read_header(f)
        if dtype.hasobject:
            raise DataError(f"{where} holds Python objects; refused: loading them could run code")
        declared, held = math.prod(shape) * dtype.itemsize, size - f.tell()
        if declared != held:
            raise DataError(
                f"{where}: its header declares shape {shape} of {dtype} ({_bytes(declared)}), but the "
                f"file holds {_bytes(held)} for it (damaged or forged)"
            )
        rows = 1 if not shape else shape[0] if fortran or limit is None else min(limit, shape[0])
        count = math.prod(shape[1:]) * rows
        if count * dtype.itemsize > (memory := _memory_bytes()):
            raise DataError(
                f"{where} is {_bytes(count * dtype.itemsize)}, more than this machine's memory "
                f"({_bytes(memory)}); read fewer images (limit=N)"
            )
        buffer = bytearray(count * dtype.itemsize)
        view, done = memoryview(buffer), 0
        while done < len(buffer) and (got := f.readinto(view[done:])):
            done += got
        if done < len(buffer):
            raise DataError(f"{where}: the file ends before the array does (truncated?)")
    array = np.frombuffer(buffer, dtype)
    if fortran:
        return array.reshape(shape[::-1]).transpose()[:limit]
    return array.reshape(rows, *shape[1:]) if shape else array.reshape(())


def _memory_bytes() -> int:
    """This machine's physical memory in bytes (unbounded where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return sys.maxsize


def _bytes(n: int) -> str:
    """A byte count for people: 713 TiB, 47 MiB, 12 bytes."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def _read_npz(path: Path, key: str, limit: int | None) -> np.ndarray:
    """The first `limit` entries of the array `key` (a 0-d array as it is, for the caller to refuse)."""
    return read_npz(path, [key], limit=limit)[key]


def _load_npz(path: Path, key: str, limit: int | None) -> Tensor:
    array = _read_npz(path, key, limit)
    if array.dtype != np.uint8:
        raise DataError(f"{path}:{key} must hold uint8 images, got dtype {array.dtype}")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or len(array) == 0:
        raise DataError(
            f"{path}:{key} must be N×H×W or N×H×W×C (C = 1 or 3) with N ≥ 1, got shape {array.shape}"
        )
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous()


def load_labels(
    path: str | os.PathLike, *, key: str = "y_train", limit: int | None = None
) -> tuple[Tensor, tuple[str, ...]]:
    """(class labels int64 (N,), class names) of the dataset `load_images` reads from `path`.

    An `.npz`: the integer array `key`, labels 0 … K − 1 named "0" … "K−1" (K = the largest + 1).
    A folder: each image's class is its top-level sub-folder; names sorted, label = position.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such dataset: {path}")
    if path.is_dir():
        folders = [f.relative_to(path).parts[0] for f in _image_files(path)[:limit]]
        loose = next((f for f in folders if (path / f).is_file()), None)
        if loose is not None:
            raise DataError(
                f"{path / loose} is not in a class sub-folder: for class labels, put each class's "
                f"images in a sub-folder named after it ({path}/<class>/...)"
            )
        names = tuple(sorted(set(folders)))
        return torch.tensor([names.index(f) for f in folders], dtype=torch.int64), names
    if path.suffix.lower() != ".npz":
        raise DataError(f"{path}: class labels come from an .npz array or an image folder's sub-folders")
    y = _read_npz(path, key, limit)
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or len(y) == 0 or y.min() < 0:
        raise DataError(
            f"{path}:{key} must hold class labels, non-negative integers of shape (N,), "
            f"got {y.dtype} of shape {y.shape}"
        )
    return torch.from_numpy(y.astype(np.int64)), tuple(str(k) for k in range(int(y.max()) + 1))


def _image_files(folder: Path) -> list[Path]:
    """The images of a folder, searched recursively, sorted by path."""
    if not os.access(folder, os.R_OK | os.X_OK):  # rglob would find nothing in it, and say so
        raise DataError(f"cannot read {folder}: permission denied")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}, searched recursively)")
    return files


def _load_folder(
    folder: Path, resolution: int | None, fit: Fit, channels: int | None, limit: int | None, progress: bool
) -> Tensor:
    return _load_folder_files(_image_files(folder)[:limit], resolution, fit, channels, progress)


def _load_folder_files(
    files: list[Path], resolution: int | None, fit: Fit, channels: int | None, progress: bool
) -> Tensor:
    images = []
    for file in tqdm(files, disable=not progress, desc="loading images", unit="img"):
        img = _read_image(file, channels)
        if resolution is not None:
            try:
                img = fit_images(img[None], resolution, fit)[0]
            except DataError as e:
                raise DataError(f"{file}: {e}") from None
        elif images and img.shape[-2:] != images[0].shape[-2:]:
            (h0, w0), (h, w) = images[0].shape[-2:], img.shape[-2:]
            raise DataError(
                f"{file} is {h}×{w} but {files[0]} is {h0}×{w0}; give a resolution to fit them all"
            )
        images.append(img)
    if channels is None and any(img.shape[0] == 3 for img in images):
        images = [img.expand(3, -1, -1) for img in images]  # mixed folder: grayscale → RGB
    return torch.stack(images).contiguous()


def _read_image(file: Path, channels: int | None) -> Tensor:
    """One file → uint8 (C, H, W), C = 1 for grayscale files unless channels = 3."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refused, as the larger ones are
            with Image.open(file) as im:
                gray = im.mode in ("1", "L", "LA", "I", "F") or im.mode.startswith("I;16")
                array = np.asarray(
                    to_8bit(im, "L" if (channels == 1 or (channels is None and gray)) else "RGB")
                )
    # Not a blanket default: Pillow's many format plugins fail on damaged files with almost any
    # exception type (NotImplementedError from a DDS pixel format, struct.error, SyntaxError, ...).
    except Exception as e:
        raise DataError(f"{file}: cannot read this image ({image_error(e)})") from None
    return torch.from_numpy(array.reshape(*array.shape[:2], -1).copy()).permute(2, 0, 1)


def image_error(e: BaseException) -> str:
    """Why Pillow could not read an image, in plain words (no exception names) for one line."""
    detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, UnidentifiedImageError):
        return "not an image file of a format this reads (PNG, JPEG, GIF, BMP, WebP, TIFF, …)"
    if isinstance(e, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"too many pixels: {detail}"
    return f"a damaged or cut-short image file{f': {detail}' if detail else ''}"


def to_8bit(image: Image.Image, mode: str) -> Image.Image:
    """`image` in the 8-bit `mode` ("L" or "RGB"). Pillow's convert clips 16-bit grey (a 16-bit
    PNG opens as "I;16" or "I") to 255; here it is scaled, 65535 → 255, as 8-bit tools show it."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        levels = np.asarray(image, dtype=np.float64).clip(0, 65535) / 257.0
        image = Image.fromarray(levels.round().astype(np.uint8))
    return image.convert(mode)


def _set_channels(x: Tensor, channels: int | None, path: Path) -> Tensor:
    if channels is None or x.shape[1] == channels:
        return x
    if channels == 3:  # grayscale → RGB by repetition
        return x.expand(-1, 3, -1, -1).contiguous()
    raise DataError(f"{path} holds RGB images; this model needs {channels} channel(s)")
