"""diffusers `UNet2DModel` folders (field names as of diffusers 0.42; e.g. google/ddpm-cifar10-32).

A `UNet2DModel` built from DownBlock2D/AttnDownBlock2D, UpBlock2D/AttnUpBlock2D and the
UNetMidBlock2D, with DDPM's sinusoidal embedding ([sin, cos], frequency shift 1), swish,
GroupNorm(ε = 1e-6), single-head attention and TF-style stride-2 downsampling is the DDPM U-Net
module for module; `config_from_diffusers` refuses, naming the field, every config that is not.
Weights are renamed by `our_key_to_theirs`; attention's linear layers become 1×1 convolutions.
The schedule and prediction type come from the scheduler config beside the model.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from torch import Tensor

from ddim.checkpoint import CheckpointError, check_weights, read_safetensors, read_torch_file
from ddim.models import Model
from ddim.models.parameterization import Prediction
from ddim.models.unet import UNet, UNetConfig
from ddim.schedule import NoiseSchedule

_R = TypeVar("_R")

WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# field: (the values our U-Net computes, diffusers' default when the field is absent)
_FIXED: dict[str, tuple[tuple, object]] = {
    "act_fn": (("silu", "swish"), "silu"),
    "time_embedding_type": (("positional",), "positional"),
    "flip_sin_to_cos": ((False,), True),
    "freq_shift": ((1,), 0),
    "center_input_sample": ((False,), False),
    "resnet_time_scale_shift": (("default",), "default"),
    "downsample_padding": ((0,), 1),
    "downsample_type": (("conv",), "conv"),
    "upsample_type": (("conv",), "conv"),
    "mid_block_type": (("UNetMidBlock2D",), "UNetMidBlock2D"),
    "mid_block_scale_factor": ((1,), 1),
    "add_attention": ((True,), True),
    "class_embed_type": ((None,), None),
    "num_class_embeds": ((None,), None),
    "norm_eps": ((1e-6,), 1e-5),
}
_SHAPE_FIELDS = (
    "sample_size", "in_channels", "out_channels", "block_out_channels", "layers_per_block", "dropout",
    "norm_num_groups", "attn_norm_num_groups", "attention_head_dim", "time_embedding_dim",
    "down_block_types", "up_block_types", "num_train_timesteps",
)  # fmt: skip
_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "GaussianDDPMScheduler")
PREDICTIONS: dict[str, Prediction] = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def is_diffusers_folder(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "model_index.json").is_file()


def load_folder(path: str | os.PathLike) -> Model:
    """A `UNet2DModel` folder, or a pipeline folder holding one, as a `Model`."""
    path = Path(path)
    unet_dir, scheduler_file = locate(path)
    config = _typed(config_from_diffusers, unet_dir / "config.json")
    net = UNet(config)
    theirs = {our_key_to_theirs(k, len(config.ch_mult)): (k, v) for k, v in net.state_dict().items()}
    state = _read_weights(unet_dir)
    expected = {
        k: v.flatten(1) if is_attn_linear(k) else v for k, (_, v) in theirs.items()
    }  # (C, C, 1, 1) → (C, C)
    check_weights(state, expected, unet_dir)
    ours = {
        theirs[k][0]: v.reshape(theirs[k][1].shape) for k, v in state.items()
    }  # attention (C, C) → (C, C, 1, 1)
    net.load_state_dict(ours)

    if scheduler_file is None:
        schedule, prediction = NoiseSchedule.linear(1000, 1e-4, 0.02), "eps"
        note = "assumed (no scheduler_config.json): diffusers' default, linear 1e-4 -> 0.02, T = 1000, eps"
    else:
        schedule, prediction = _typed(schedule_from_diffusers, scheduler_file)
        note = f"from {scheduler_file}"
    info = {"imported_from": str(path), "format": "diffusers", "schedule": note}
    image_shape = (config.in_channels, config.resolution, config.resolution)
    return Model(net.eval(), schedule, image_shape, prediction, info)


def _typed(read: Callable[[dict, Path], _R], file: Path) -> _R:
    """`read(the JSON object in file, file)`; a field of a JSON type the checks did not expect
    (a number where a list goes, a list where a name goes) is a one-line CheckpointError."""
    try:
        return read(_read_json(file), file)
    except (TypeError, AttributeError) as e:
        raise CheckpointError(f"{file}: a field has the wrong type ({e})") from None


def locate(path: Path) -> tuple[Path, Path | None]:
    """(the folder holding the UNet2DModel config and weights, its scheduler_config.json or None).

    A pipeline folder names its components in model_index.json; each lives in the subfolder of
    its name, or in the pipeline folder itself (the flat layout of google/ddpm-cifar10-32). A lone
    UNet folder finds its scheduler beside it: `../scheduler/`.
    """
    index = path / "model_index.json"
    if index.is_file():
        components = _read_json(index)
        unets = [k for k, v in components.items() if isinstance(v, list) and v[-1:] == ["UNet2DModel"]]
        if not unets:
            found = {k: v[-1] for k, v in components.items() if isinstance(v, list) and v}
            raise CheckpointError(f"{index} names no UNet2DModel component (found {found})")
        unet_dir, scheduler_dir = (path / n if (path / n).is_dir() else path for n in (unets[0], "scheduler"))
    else:
        unet_dir = path
        scheduler_dir = path if (path / "scheduler_config.json").is_file() else path.parent / "scheduler"
    scheduler_file = scheduler_dir / "scheduler_config.json"
    return unet_dir, scheduler_file if scheduler_file.is_file() else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent} has no {path.name}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def _refuse(where: Path, field: str, value: object, allowed: str) -> CheckpointError:
    return CheckpointError(f"{where}: unsupported {field}={value!r}; allowed: {allowed}")


def config_from_diffusers(cfg: dict, where: Path) -> UNetConfig:
    """Our `UNetConfig` for a UNet2DModel config, or a `CheckpointError` naming the field that
    changes the computation."""
    if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise _refuse(where, "_class_name", cfg["_class_name"], "'UNet2DModel'")
    unknown = sorted(k for k in cfg if not k.startswith("_") and k not in _FIXED and k not in _SHAPE_FIELDS)
    if unknown:
        raise CheckpointError(
            f"{where}: unknown UNet2DModel field(s) {unknown}; cannot tell what they change"
        )
    for field, (allowed, default) in _FIXED.items():
        value = cfg.get(field, default)
        if value not in allowed:
            raise _refuse(where, field, value, " or ".join(map(repr, allowed)))
    channels, attn_levels = _levels(cfg, where)
    ch = channels[0]
    groups = cfg.get("norm_num_groups", 32)
    if cfg.get("attn_norm_num_groups") not in (None, groups):
        raise _refuse(where, "attn_norm_num_groups", cfg["attn_norm_num_groups"], f"null or {groups}")
    if cfg.get("time_embedding_dim") not in (None, 4 * ch):
        raise _refuse(where, "time_embedding_dim", cfg["time_embedding_dim"], f"null or {4 * ch}")
    size = cfg.get("sample_size")
    if isinstance(size, list | tuple) and len(size) == 2 and size[0] == size[1]:
        size = size[0]  # [H, W], square
    if not isinstance(size, int) or size < 1:
        raise _refuse(where, "sample_size", size, "a positive integer (or a square [H, W])")
    try:
        return UNetConfig(
            resolution=size, in_channels=cfg.get("in_channels", 3), out_channels=cfg.get("out_channels", 3),
            ch=ch, ch_mult=tuple(c // ch for c in channels), num_res_blocks=cfg.get("layers_per_block", 2),
            attn_resolutions=tuple(size // 2**i for i in attn_levels), dropout=cfg.get("dropout", 0.0),
            norm_groups=groups,
        )  # fmt: skip
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: {e}") from None


def _levels(cfg: dict, where: Path) -> tuple[list[int], list[int]]:
    """(channels of each level, the levels with attention), from block_out_channels and the
    block types. Down block i is level i; up block k is level L − 1 − k."""
    channels = _sequence(cfg, "block_out_channels", (224, 448, 672, 896), where)
    if not channels or any(not isinstance(c, int) or c < 1 or c % channels[0] for c in channels):
        raise _refuse(where, "block_out_channels", channels, "positive multiples of the first entry")
    attn_down, attn_up = ("AttnDownBlock2D",) * 3, ("AttnUpBlock2D",) * 3
    down = _sequence(cfg, "down_block_types", ("DownBlock2D", *attn_down), where)
    up = _sequence(cfg, "up_block_types", (*attn_up, "UpBlock2D"), where)
    for field, types, allowed in (
        ("down_block_types", down, "DownBlock2D"),
        ("up_block_types", up, "UpBlock2D"),
    ):
        if len(types) != len(channels) or any(t not in (allowed, f"Attn{allowed}") for t in types):
            raise _refuse(where, field, types, f"{len(channels)} of {allowed}/Attn{allowed}")
    attn_levels = [i for i, t in enumerate(down) if t.startswith("Attn")]
    if attn_levels != [len(up) - 1 - k for k, t in reversed(list(enumerate(up))) if t.startswith("Attn")]:
        raise _refuse(where, "up_block_types", up, "attention at the same levels as down_block_types")
    _check_heads(cfg, [channels[i] for i in attn_levels] + [channels[-1]], where)
    return channels, attn_levels


def _sequence(cfg: dict, field: str, default: tuple, where: Path) -> list:
    value = cfg.get(field, default)
    if not isinstance(value, list | tuple):
        raise _refuse(where, field, value, "a list")
    return list(value)


def _check_heads(cfg: dict, attn_channels: list[int], where: Path) -> None:
    """Attention splits C channels into C // attention_head_dim heads; ours has one head."""
    head_dim = cfg.get("attention_head_dim", 8)
    for c in attn_channels:
        if head_dim is not None and head_dim != c:
            raise _refuse(
                where, "attention_head_dim", head_dim, f"one attention head (null, or {c} at {c} channels)"
            )


_BLOCK = {
    "block": "resnets",
    "attn": "attentions",
    "downsample": "downsamplers.0",
    "upsample": "upsamplers.0",
}
_MID = {"block_1": "resnets.0", "attn_1": "attentions.0", "block_2": "resnets.1"}
_LEAF = {"temb_proj": "time_emb_proj", "nin_shortcut": "conv_shortcut"}
_ATTN_LEAF = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_DEPRECATED_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def our_key_to_theirs(key: str, levels: int) -> str:
    """The UNet2DModel name of one of our weights. Our up[i] is level i (as in the official code);
    diffusers' up_blocks run bottom to top, so up_blocks[k] is level levels − 1 − k."""
    parts = key.split(".")
    if parts[0] == "temb":  # temb.dense.{0,1}.weight
        return f"time_embedding.linear_{int(parts[2]) + 1}.{parts[3]}"
    if parts[0] in ("down", "up"):  # down.i.block.j.conv1.weight, up.i.upsample.conv.weight, ...
        i = int(parts[1]) if parts[0] == "down" else levels - 1 - int(parts[1])
        head, rest = f"{parts[0]}_blocks.{i}.{_BLOCK[parts[2]]}", parts[3:]
        if parts[2] in ("block", "attn"):
            head, rest = f"{head}.{rest[0]}", rest[1:]
        return _leaf(head, rest, attn=parts[2] == "attn")
    if parts[0] == "mid":  # mid.attn_1.q.weight
        return _leaf(f"mid_block.{_MID[parts[1]]}", parts[2:], attn=parts[1] == "attn_1")
    return {"norm_out": "conv_norm_out"}.get(parts[0], parts[0]) + "." + ".".join(parts[1:])


def _leaf(head: str, rest: list[str], attn: bool) -> str:
    name = (_ATTN_LEAF if attn else _LEAF).get(rest[0], rest[0])
    return ".".join([head, name, *rest[1:]])


def is_attn_linear(their_key: str) -> bool:  # diffusers' attention projections are nn.Linear
    return re.search(r"attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$", their_key) is not None


def _read_weights(folder: Path) -> dict[str, Tensor]:
    """The folder's weights, with pre-0.15 attention names (query, key, value, proj_attn)
    renamed as diffusers renames them on load."""
    path = next((folder / w for w in WEIGHTS if (folder / w).is_file()), None)
    if path is None:
        raise CheckpointError(f"{folder} has no {' or '.join(WEIGHTS)}")
    if path.suffix == ".safetensors":
        state = read_safetensors(path)
    else:
        state = read_torch_file(path)
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise CheckpointError(f"{path} does not hold a state_dict")
    pattern = re.compile(r"(attentions\.\d+)\.(query|key|value|proj_attn)\.")
    return {pattern.sub(lambda m: f"{m[1]}.{_DEPRECATED_ATTN[m[2]]}.", k): v for k, v in state.items()}


def schedule_from_diffusers(cfg: dict, where: Path) -> tuple[NoiseSchedule, Prediction]:
    """The β schedule and prediction type of a DDPM/DDIM scheduler config (diffusers' defaults
    for absent fields; the pre-release `timesteps` field counts as num_train_timesteps)."""
    name = cfg.get("_class_name", "DDPMScheduler")
    if name not in _SCHEDULERS:
        raise _refuse(where, "_class_name", name, " or ".join(_SCHEDULERS))
    if cfg.get("rescale_betas_zero_snr", False):
        raise _refuse(where, "rescale_betas_zero_snr", True, "false (ᾱ_T = 0 has no Gaussian x_T)")
    prediction = cfg.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise _refuse(where, "prediction_type", prediction, " or ".join(PREDICTIONS))
    T = cfg.get("num_train_timesteps", cfg.get("timesteps", 1000))
    start, end = cfg.get("beta_start", 1e-4), cfg.get("beta_end", 0.02)
    kind = cfg.get("beta_schedule", "linear")
    if cfg.get("trained_betas") is None and kind not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        raise _refuse(where, "beta_schedule", kind, "linear, scaled_linear or squaredcos_cap_v2")
    try:
        if cfg.get("trained_betas") is not None:
            schedule = NoiseSchedule.from_betas(cfg["trained_betas"])
        elif kind == "linear":
            schedule = NoiseSchedule.linear(T, start, end)
        elif kind == "scaled_linear":  # β_t = (linspace(√β_1, √β_T))², the latent-diffusion schedule
            schedule = NoiseSchedule.from_betas(np.linspace(math.sqrt(start), math.sqrt(end), T) ** 2)
        else:  # squaredcos_cap_v2: Nichol & Dhariwal's cosine, β capped at 0.999
            schedule = NoiseSchedule.cosine(T)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: {e}") from None
    return schedule, PREDICTIONS[prediction]
