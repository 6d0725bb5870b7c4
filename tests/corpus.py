"""A corpus of malformed inputs, generated here (nothing stored): images in every format Pillow
both writes and reads, mutated; the DDS file of issue 24; forged safetensors metadata and npz
array headers."""

from __future__ import annotations

import io
import json
import random
import struct
import warnings
import zipfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
from PIL import Image


@cache
def image_files() -> dict[str, bytes]:
    """A 28×28 image in each format Pillow can write and read back (about 20: PNG, JPEG, WebP,
    AVIF, DDS, ICO, QOI, TIFF, ...), by format name; ICNS is left out (147 kB a file)."""
    Image.init()
    pixels = (np.arange(28 * 28 * 3).reshape(28, 28, 3) % 251).astype(np.uint8)
    files = {}
    for fmt in sorted(set(Image.SAVE) - {"ICNS"}):
        for mode in ("RGB", "L", "1"):
            buffer = io.BytesIO()
            try:
                with warnings.catch_warnings():  # "IM image format is deprecated"
                    warnings.simplefilter("ignore", DeprecationWarning)
                    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
                    with Image.open(io.BytesIO(buffer.getvalue())) as im:
                        im.load()
            except Exception:  # a mode this format does not write, or a write-only format
                continue
            files[fmt] = buffer.getvalue()
            break
    return files


def bad_dds() -> bytes:
    """Issue 24's reproduction: a DDS file whose pixel-format flags (bytes 80–84) are 2, which
    makes Pillow raise NotImplementedError."""
    data = bytearray(image_files()["DDS"])
    data[80:84] = struct.pack("<I", 2)
    return bytes(data)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random damage: cut short, bytes flipped, a header field overwritten with an extreme
    integer, bytes inserted, or another format's header spliced in front."""
    data = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:
        return bytes(data[: rng.randrange(len(data))])
    if kind == 1:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 2:
        at = rng.randrange(min(len(data), 128))
        value = rng.choice([0, 1, 2, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.getrandbits(32)])
        data[at : at + 4] = struct.pack(rng.choice(["<I", ">I"]), value)
    elif kind == 3:
        at = rng.randrange(len(data))
        data[at:at] = rng.randbytes(rng.randint(1, 64))
    else:
        other = rng.choice(list(image_files().values()))
        return other[: rng.randint(4, 64)] + bytes(data[rng.randrange(len(data)) :])
    return bytes(data)


def mutated_images(n: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """`n` (name, bytes) cases: the formats in turn, each mutated by its own seeded generator."""
    formats = sorted(image_files())
    for i in range(n):
        fmt = formats[i % len(formats)]
        yield f"{fmt}-{i}", mutate(image_files()[fmt], random.Random(seed * 1_000_003 + i))


def forge_checkpoint(source: Path, out: Path, **changes) -> Path:
    """A copy of a native checkpoint whose "ddim" metadata has `changes` applied (a value of a
    dict is merged into the metadata's dict of that name, e.g. net={"ch": 10**7})."""
    with safetensors.safe_open(str(source), framework="pt") as f:
        meta = json.loads(f.metadata()["ddim"])
    tensors = safetensors.torch.load_file(str(source))
    for key, value in changes.items():
        meta[key] = {**meta[key], **value} if isinstance(value, dict) else value
    safetensors.torch.save_file(tensors, str(out), metadata={"ddim": json.dumps(meta)})
    return out


def npy_with_header(shape: tuple[int, ...], dtype: str = "|u1", data: bytes = b"") -> bytes:
    """An .npy member whose header declares `shape` and `dtype` over whatever `data` is."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def write_npz(path: Path, members: dict[str, bytes], compress: bool = False) -> Path:
    """An .npz holding raw .npy `members` (forged headers included) by array name."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as z:
        for name, member in members.items():
            z.writestr(f"{name}.npy", member)
    return path
