"""The native checkpoint format and the built-in models.

A checkpoint is one `.safetensors` file: the network's weights under `net.*` (the EMA weights,
for trained models), the schedule's β under `schedule.betas` (float64), and in the metadata
key "ddim" a JSON object: format name and version, the net config, image shape, prediction
type, data range and free-form provenance (`info`). Loading never executes code from a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import nn

from ddim.io import atomic_write
from ddim.models import Model
from ddim.models.unet import UNet, UNetConfig
from ddim.schedule import NoiseSchedule
from ddim.toy import MixtureDenoiser, toy_model

FORMAT, FORMAT_VERSION = "ddim", 1
_NETS: dict[str, Callable[[dict, NoiseSchedule], nn.Module]] = {
    "unet": lambda cfg, schedule: UNet(UNetConfig.from_dict(cfg)),
    "gaussian-mixture": MixtureDenoiser.from_config,
}
_BUILTIN_FACTORIES: dict[str, Callable[[], Model]] = {"toy": toy_model}


class CheckpointError(ValueError):
    """A file that is missing, corrupt, or not a checkpoint this version can read."""


def builtin_names() -> list[str]:
    """Names `load` accepts besides paths: factories and the files shipped in ddim/weights/."""
    folder = _weights_dir()
    files = folder.iterdir() if folder.is_dir() else []
    shipped = [p.name.removesuffix(".safetensors") for p in files if p.name.endswith(".safetensors")]
    return sorted({*_BUILTIN_FACTORIES, *shipped})


def _weights_dir():  # a Traversable, the package's weights/ folder
    return resources.files("ddim") / "weights"


def save(model: Model, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write `model` as a native checkpoint, atomically. Returns the path.

    dtype: store the floating-point weights in this type (e.g. torch.float16, half the size);
    they load back into the network's own dtype. The schedule always stays float64.
    """
    config = getattr(model.net, "config", None)
    if not hasattr(config, "to_dict"):
        raise ValueError(f"cannot save a {type(model.net).__name__}: its config has no to_dict()")
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point type, got {dtype}")
    tensors = {
        f"net.{k}": (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
        .detach()
        .cpu()
        .contiguous()
        for k, v in model.net.state_dict().items()
    }
    tensors["schedule.betas"] = model.schedule.betas
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "net": config.to_dict(),
        "image_shape": list(model.image_shape),
        "prediction": model.prediction,
        "data_range": [-1.0, 1.0],
        "info": model.info,
    }
    data = safetensors.torch.save(tensors, metadata={FORMAT: json.dumps(meta)})
    return atomic_write(path, lambda f: f.write(data))


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> Model:
    """A built-in model by name (see `builtin_names()`) or a native checkpoint by path."""
    key = str(name_or_path)
    if key in _BUILTIN_FACTORIES:
        model = _BUILTIN_FACTORIES[key]()
    elif (_weights_dir() / f"{key}.safetensors").is_file():
        with resources.as_file(_weights_dir() / f"{key}.safetensors") as path:
            model = _load_file(path)
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise CheckpointError(
                f"no such file, and not a built-in model: {key} (built-in: {', '.join(builtin_names())})"
            )
        if path.is_dir():
            raise CheckpointError(f"{path} is a folder; a ddim checkpoint is a .safetensors file")
        model = _load_file(path)
    model.net.to(device)
    return model


def read_metadata(path: str | os.PathLike) -> dict:
    """The "ddim" metadata of a checkpoint, validated, without reading the weights."""
    return _read(Path(path), tensors=False)[0]


def _read(path: Path, tensors: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(FORMAT)
            data = {k: f.get_tensor(k) for k in f.keys()} if tensors and raw is not None else {}  # noqa: SIM118
    except (safetensors.SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (corrupt or truncated?): {e}"
        ) from None
    if raw is None:
        raise CheckpointError(
            f"{path} is a safetensors file but not a ddim checkpoint (no '{FORMAT}' metadata)"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the ddim metadata is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: the ddim metadata does not name the format {FORMAT!r}")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: the ddim metadata lacks a format version")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this ddim reads versions up to "
            f"{FORMAT_VERSION}: upgrade ddim"
        )
    return meta, data


def _load_file(path: Path) -> Model:
    meta, tensors = _read(path, tensors=True)
    try:
        schedule = NoiseSchedule.from_betas(tensors.pop("schedule.betas"))
        net_cfg = meta["net"]
        if net_cfg.get("type") not in _NETS:
            raise ValueError(f"unknown net type {net_cfg.get('type')!r} (known: {', '.join(_NETS)})")
        net = _NETS[net_cfg["type"]](net_cfg, schedule)
        model = Model(net, schedule, tuple(meta["image_shape"]), meta["prediction"], meta.get("info") or {})
    except (KeyError, ValueError, TypeError) as e:
        missing = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"{path}: invalid checkpoint config: {missing}") from None
    state = {k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")}
    _load_state(net, state, path)
    return Model(net.eval(), schedule, model.image_shape, model.prediction, model.info)


def _load_state(net: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = net.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(
                f"{path}: net.{k} has shape {tuple(v.shape)}, the config needs {tuple(expected[k].shape)}"
            )
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{path}: net.{k} holds NaN or infinite values")
    net.load_state_dict(state)
