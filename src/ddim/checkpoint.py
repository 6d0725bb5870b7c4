"""The native checkpoint format and the built-in models.

A checkpoint is one `.safetensors` file: the network's weights under `net.*` (the EMA weights,
for trained models), the schedule's β under `schedule.betas` (float64), and in the metadata
key "ddim" a JSON object: format name and version, the net config, image shape, prediction
type, data range, free-form provenance (`info`) and, for a class-conditional model whose
classes have names, `class_names` (the net config's `num_classes` counts them). Loading never
executes code from a file: `load` also reads the foreign formats of `ddim.convert`, PyTorch pickles with
`torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from ddim.io import atomic_write
from ddim.models import Model
from ddim.models.unet import UNet, UNetConfig
from ddim.schedule import NoiseSchedule
from ddim.toy import MixtureDenoiser

FORMAT, FORMAT_VERSION = "ddim", 1
MAX_SAMPLE_VALUES = 2**26  # values in one sample (C·H·W) a checkpoint may declare: 4096×4096×4
_NETS: dict[str, Callable[[dict, NoiseSchedule], nn.Module]] = {
    "unet": lambda cfg, schedule: UNet(UNetConfig.from_dict(cfg)),
    "gaussian-mixture": MixtureDenoiser.from_config,
}
_INPUT_SHAPES: dict[str, Callable[[Any], tuple[int, ...]]] = {  # net.config → the shape of one sample
    "unet": lambda c: (c.in_channels, c.resolution, c.resolution),
    "gaussian-mixture": lambda c: tuple(c.shape),
}


class CheckpointError(ValueError):
    """A file that is missing, corrupt, or not a checkpoint this version can read."""


def shipped_names() -> list[str]:
    """The models shipped as native files in the package's weights/ folder."""
    folder = _weights_dir()
    files = folder.iterdir() if folder.is_dir() else []
    return sorted(p.name.removesuffix(".safetensors") for p in files if p.name.endswith(".safetensors"))


def shipped_file(name: str):  # a Traversable: the shipped model `name`, which may not exist
    return _weights_dir() / f"{name}.safetensors"


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
        **({"class_names": list(model.class_names)} if model.class_names else {}),
    }
    data = safetensors.torch.save(tensors, metadata={FORMAT: json.dumps(meta)})
    return atomic_write(path, lambda f: f.write(data))


def read_metadata(path: str | os.PathLike) -> dict:
    """The "ddim" metadata of a checkpoint, validated, without reading the weights."""
    return _read(Path(path), tensors=False)[0]


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (of any origin), with one-line errors."""
    with _safe_open(Path(path)) as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


@contextmanager
def _safe_open(path: Path) -> Iterator[safetensors.safe_open]:
    """`safetensors.safe_open`, whose errors become one line: unreadable, corrupt or truncated."""
    try:
        with open(path, "rb"):  # safetensors reports a file it may not read as missing
            pass
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            yield f
    except (safetensors.SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (corrupt or truncated?): {e}"
        ) from None


def _read(path: Path, tensors: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    with _safe_open(path) as f:
        raw = (f.metadata() or {}).get(FORMAT)
        data = {k: f.get_tensor(k) for k in f.keys()} if tensors and raw is not None else {}  # noqa: SIM118
    if raw is None:
        raise CheckpointError(
            f"{path} is a safetensors file but not a ddim checkpoint (no '{FORMAT}' metadata; "
            "for a diffusers model, pass its folder)"
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


def load_native(path: str | os.PathLike) -> Model:
    """A native checkpoint file (see the module docstring)."""
    path = Path(path)
    meta, tensors = _read(path, tensors=True)
    try:
        schedule = NoiseSchedule.from_betas(tensors.pop("schedule.betas"))
        net_cfg = meta["net"]
        if not isinstance(net_cfg, dict):  # even a known name: its settings are missing
            raise ValueError(f"unknown net type {net_cfg!r}: net must be a table of settings with a 'type'")
        kind = net_cfg.get("type")
        if kind not in _NETS:
            raise ValueError(f"unknown net type {kind!r} (known: {', '.join(_NETS)})")
        shape, info, names = meta["image_shape"], meta.get("info") or {}, meta.get("class_names", [])
        if not (isinstance(shape, list) and all(isinstance(d, int) and d > 0 for d in shape)):
            raise ValueError(f"image_shape must be a list of positive integers, got {shape!r}")
        if math.prod(shape) > MAX_SAMPLE_VALUES:
            raise ValueError(
                f"image_shape {shape} has {math.prod(shape):,} values a sample; at most "
                f"{MAX_SAMPLE_VALUES:,} are accepted (a damaged or forged file?)"
            )
        with torch.device("meta"):  # shapes only, no memory: the config may claim any size
            skeleton = _NETS[kind](net_cfg, schedule)
        shape = tuple(shape)
        model = Model(skeleton, schedule, shape, meta["prediction"], info, tuple(names))
        takes = _INPUT_SHAPES[kind](skeleton.config)
        if model.image_shape != takes:
            raise ValueError(f"image_shape {list(shape)} is not the network's input shape {list(takes)}")
    except (KeyError, ValueError, TypeError) as e:
        missing = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"{path}: invalid checkpoint config: {missing}") from None
    state = {k: v for k, v in tensors.items() if k.startswith("net.")}
    # the file's tensors are real (safetensors checks them against the file's size): a config
    # that claims a larger network is refused here, before that network is built
    check_weights(state, {f"net.{k}": v for k, v in skeleton.state_dict().items()}, path)
    net = _NETS[kind](net_cfg, schedule)
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    return Model(net.eval(), schedule, model.image_shape, model.prediction, model.info, model.class_names)


def check_weights(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str | os.PathLike
) -> None:
    """Refuse weights whose names or shapes differ from `expected` (the architecture's own tensors),
    that are integers where it holds floating point, or that hold NaN/inf.

    Both dicts use the names as they appear in the file, so the message names what the user has.
    """
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not match the architecture: missing {_few(missing)}, "
            f"unexpected {_few(unexpected)}"
        )
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(
                f"{where}: {k} has shape {tuple(v.shape)}, the architecture needs {tuple(expected[k].shape)}"
            )
        if expected[k].is_floating_point() and not v.is_floating_point():
            raise CheckpointError(
                f"{where}: {k} holds {v.dtype} values, the architecture needs floating point"
            )
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{where}: {k} holds NaN or infinite values")


def read_torch_file(path: str | os.PathLike) -> object:
    """`torch.load(path, weights_only=True)` on the CPU: tensors and plain containers only.

    A pickle that names any other object (one that would run code when loaded) is refused.
    """
    try:
        with warnings.catch_warnings():  # a pickle of another protocol: the error below says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {first_line(e)}") from None
    # Not a blanket default: a damaged file makes torch's unpickler fail with almost any
    # exception type (KeyError, IndexError, struct.error, ...); each becomes one line here.
    except Exception as e:
        why = _weights_only_refusal(e)
        if why is not None:
            if why.startswith("Unsupported operand"):  # a pickle opcode torch.save never writes
                raise CheckpointError(
                    f"{path} is not a PyTorch checkpoint: a pickle that torch.save did not write ({why})"
                ) from None
            raise CheckpointError(
                f"{path}: refused by torch.load(weights_only=True): the pickle holds more than tensors "
                f"and plain containers, and loading it could run code ({why})"
            ) from None
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {first_line(e)}"
        ) from None


def _weights_only_refusal(e: Exception) -> str | None:
    """The reason in torch.load(weights_only=True)'s refusal, many lines long, or None if `e` is
    another error. Torch 2.4-2.5 mark it "WeightsUnpickler error:"; later versions put it after
    a paragraph that begins "Weights only load failed"."""
    text = str(e)
    if not isinstance(e, pickle.UnpicklingError) or not (
        "WeightsUnpickler error:" in text or text.startswith("Weights only load failed")
    ):
        return None
    _, marker, rest = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (rest if marker else text).splitlines() if line.strip()]
    reasons = [line for line in lines[0 if marker else 1 :] if not line.startswith("Check the documentation")]
    return reasons[0].split(". ")[0].removesuffix(".") if reasons else "no reason given"


def _few(keys: list[str], n: int = 3) -> str:
    return f"{keys[:n]}{f' and {len(keys) - n} more' if len(keys) > n else ''}"


def first_line(e: BaseException) -> str:
    """'Type: first line of the message', for one-line errors."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
