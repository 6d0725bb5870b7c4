"""`load`: a model by any of its names. It sits above every format that reads one (the native
`checkpoint`, the importers of `convert`, the downloads of `hub`) and the factories of built-in
models that are code, not files (`toy`), so none of those needs to know the others."""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch

from ddim import convert, hub
from ddim.checkpoint import CheckpointError, load_native, shipped_file, shipped_names
from ddim.models import Model
from ddim.toy import toy_model

_FACTORIES: dict[str, Callable[[], Model]] = {"toy": toy_model}


def builtin_names() -> list[str]:
    """Names `load` accepts besides paths: factories and the files shipped in ddim/weights/."""
    return sorted({*_FACTORIES, *shipped_names()})


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> Model:
    """A built-in model by name (see `builtin_names()`), a path: a native checkpoint, a
    diffusers UNet2DModel folder or an official DDPM/DDIM checkpoint (see `ddim.convert`), or a
    published model: a short name like "ddpm-cifar10" or a Hugging Face Hub id (see `ddim.hub`)."""
    key = str(name_or_path)
    if key in _FACTORIES:
        model = _FACTORIES[key]()
    elif shipped_file(key).is_file():
        with resources.as_file(shipped_file(key)) as path:
            model = load_native(path)
    elif hub.resolves(key):  # downloaded once, then read from the cache
        model = hub.load(key)
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise CheckpointError(
                f"no such file, and not a built-in model: {key} (built-in: {', '.join(builtin_names())})"
            )
        model = load_native(path) if convert.detect(path) == "ddim" else convert.import_model(path)
    model.net.to(device)
    return model
