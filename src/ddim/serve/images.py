"""Images over HTTP: tensors in [-1, 1] to PNG bytes and data URLs, and uploads to tensors."""

from __future__ import annotations

import base64
import io
import math
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from ddim.data import image_error, to_8bit
from ddim.io import make_grid, to_uint8


class BadImage(ValueError):  # noqa: N818 (reported to the client as 422)
    """An upload that is not an image the server will decode."""


def png_bytes(x: Tensor, nrow: int | None = None) -> bytes:
    """Images (N, C, H, W) in [-1, 1] → one PNG grid, `nrow` a row (default ≈ √N), 2 px apart
    and around; a single image is written as it is, without the border."""
    grid = make_grid(to_uint8(x), nrow, pad=0 if x.shape[0] == 1 else 2)  # (H', W', C) uint8
    buffer = io.BytesIO()
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    """PNG bytes as a `data:` URL, for JSON answers and server-sent events."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def decode_upload(data: bytes, shape: tuple[int, ...], max_pixels: int) -> Tensor:
    """An uploaded image file → (1, C, H, W) float32 in [-1, 1], fitted to `shape` = (C, H, W).

    Grey for C = 1, RGB for C = 3; cropped to the aspect ratio, then resized (the first frame of
    an animation). The pixel count is checked from the header, before anything is decoded.
    """
    channels, height, width = shape
    if channels not in (1, 3):
        raise BadImage(f"the model has {channels} channels; only 1 (grey) and 3 (RGB) can be uploaded")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                side = math.isqrt(max_pixels)
                raise BadImage(
                    f"the image is {image.width}×{image.height} pixels; the server takes images of "
                    f"at most {max_pixels:,} pixels ({side}×{side})"
                )
            image = ImageOps.fit(to_8bit(image, "L" if channels == 1 else "RGB"), (width, height))
    except BadImage:
        raise
    # Not a blanket default: Pillow's format plugins fail on damaged files with almost any
    # exception type (NotImplementedError, struct.error, SyntaxError, ...); each is a 422.
    except Exception as e:
        form = data.lstrip().startswith(b"--")  # multipart/form-data: the file inside a form
        hint = "; send the file's bytes as the request body (curl --data-binary @file), not a form"
        raise BadImage(f"{image_error(e)}{hint if form else ''}") from None
    array = np.asarray(image, dtype=np.float32).reshape(height, width, channels)  # (H, W, C)
    return torch.from_numpy(array).permute(2, 0, 1)[None] / 127.5 - 1.0  # (1, C, H, W)


def favicon() -> bytes:
    """The page's icon, drawn here: a 32×32 ICO of a noisy square turning clean, left to right."""
    x = np.linspace(0, 1, 32)[None, :]  # (1, 32) the share of the way from noise to image
    noise = np.random.default_rng(0).uniform(0, 255, (32, 32))
    clean = np.where((np.arange(32)[:, None] // 8 + np.arange(32)[None, :] // 8) % 2, 230.0, 40.0)
    pixels = ((1 - x) * noise + x * clean).astype(np.uint8)  # (32, 32)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buffer, format="ICO", sizes=[(32, 32)])
    return buffer.getvalue()
