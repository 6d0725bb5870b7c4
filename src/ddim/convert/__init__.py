"""Importers for published DDPM checkpoints: the format is detected, the weights are mapped
onto our U-Net (`ddim.models.unet`) and checked name by name and shape by shape.

- `diffusers`: a diffusers `UNet2DModel` folder (`config.json` + weights), alone or inside a
  pipeline folder (`model_index.json`), with its scheduler config when there is one.
- `official`: the PyTorch ports of the DDPM TensorFlow checkpoints (plain state_dicts, as
  used by the DDIM code) and the DDIM repo's own training list `[model, optimizer, epoch,
  step, ema]`, read with `torch.load(weights_only=True)`.

`ddim.load(path)` calls `import_model` for these; `ddim convert` writes the result natively.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from ddim.checkpoint import CheckpointError, read_metadata
from ddim.convert import diffusers, official
from ddim.models import Model

Format = Literal["ddim", "diffusers", "official"]
FORMATS: dict[str, str] = {
    "ddim": "native ddim checkpoint (.safetensors)",
    "diffusers": "diffusers UNet2DModel folder",
    "official": "official DDPM/DDIM PyTorch checkpoint (read with weights_only=True)",
}
_ZIP, _PICKLE = b"PK\x03\x04", 0x80  # torch.save's zip container; a pickle's PROTO opcode


def detect(path: str | os.PathLike) -> Format:
    """Which format `path` holds, judged by its layout, suffix and first bytes."""
    path = Path(path)
    if path.is_dir():
        if diffusers.is_diffusers_folder(path):
            return "diffusers"
        raise CheckpointError(
            f"{path} is a folder but not a diffusers model (no config.json or model_index.json); "
            "a ddim checkpoint is a .safetensors file"
        )
    if not path.exists():
        raise CheckpointError(f"no such file or folder: {path}")
    if path.suffix == ".safetensors":
        return "ddim"
    if path.suffix in official.SUFFIXES:
        return "official"
    with open(path, "rb") as f:
        head = f.read(4)
    return "official" if head == _ZIP or head[:1] == bytes([_PICKLE]) else "ddim"


def import_model(path: str | os.PathLike, *, resolution: int | None = None) -> Model:
    """A foreign checkpoint as a `Model`, on the CPU, in eval mode.

    `resolution` (official checkpoints only) gives the image size of an architecture that is
    not one of the known DDPM/DDIM configs; the weights do not record it.
    """
    path = Path(path)
    fmt = detect(path)
    if fmt == "ddim":
        read_metadata(path)  # a file that is not one says what it is instead
        raise CheckpointError(f"{path} is already a native ddim checkpoint: nothing to convert")
    if fmt == "diffusers":
        if resolution is not None:
            raise ValueError("resolution is only for official checkpoints; diffusers configs state it")
        return diffusers.load_folder(path)
    return official.load_file(path, resolution=resolution)
