"""Official DDPM/DDIM PyTorch checkpoints.

Two layouts, both read with `torch.load(weights_only=True)`:
- a plain state_dict: the PyTorch ports of Ho et al.'s TensorFlow models that the DDIM code
  loads for CIFAR-10 and LSUN (pesser/pytorch_diffusion; ermongroup/ddim `--use_pretrained`,
  `model.load_state_dict(torch.load(ckpt))`);
- the DDIM repo's training list `[model, optimizer, epoch, step, ema]` (ermongroup/ddim
  `runners/diffusion.py`), whose model entry carries DataParallel's `module.` prefixes; its
  last entry is the EMA state (used for its CelebA model). We take the last entry that is a
  state_dict, so a list saved without EMA gives the training weights, and say which.

Module names are the official ones, which our U-Net keeps. The architecture is inferred from the
weight shapes; the image resolution is not recorded in them, so it comes from the known configs
below or from the caller. GroupNorm has 32 groups in every official model (pesser
`model.py:Normalize`, our `UNetConfig` default), and the schedule is the one every official
config uses.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from torch import Tensor

from ddim.checkpoint import CheckpointError, check_weights, read_torch_file
from ddim.models import Model
from ddim.models.unet import UNet, UNetConfig
from ddim.schedule import NoiseSchedule

SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

# The official architectures (pesser/pytorch_diffusion `Diffusion.from_pretrained`; ermongroup/ddim
# configs/celeba.yml). The resolution is what the weights cannot tell; dropout only matters in training.
KNOWN: dict[str, UNetConfig] = {
    "cifar10": UNetConfig(resolution=32, ch_mult=(1, 2, 2, 2), attn_resolutions=(16,), dropout=0.1),
    "celeba64": UNetConfig(resolution=64, ch_mult=(1, 2, 2, 2, 4), attn_resolutions=(16,), dropout=0.1),
    "lsun256": UNetConfig(resolution=256, ch_mult=(1, 1, 2, 2, 4, 4), attn_resolutions=(16,), dropout=0.0),
}
# β linear from 1e-4 to 0.02 over 1000 steps, ε-prediction: every official DDPM/DDIM config
SCHEDULE_NOTE = "assumed: linear beta 1e-4 -> 0.02, T = 1000, eps-prediction (every official config)"


def load_file(path: str | os.PathLike, *, resolution: int | None = None) -> Model:
    """An official checkpoint as a `Model` (see the module docstring)."""
    path = Path(path)
    state, entry = select_state(read_torch_file(path), path)
    config, arch = infer_config(state, path, resolution)
    net = UNet(config)
    check_weights(state, net.state_dict(), path)
    net.load_state_dict(state)
    info = {
        "imported_from": str(path),
        "format": "official",
        "weights": entry,
        "architecture": arch,
        "schedule": SCHEDULE_NOTE,
    }
    image_shape = (config.in_channels, config.resolution, config.resolution)
    return Model(net.eval(), NoiseSchedule.linear(1000, 1e-4, 0.02), image_shape, "eps", info)


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def select_state(obj: object, where: Path) -> tuple[dict[str, Tensor], str]:
    """The weights inside what `torch.load` returned, without `module.` prefixes, and a note
    saying which entry they came from."""
    if _is_state_dict(obj):
        state, entry = obj, "state_dict"
    elif isinstance(obj, list | tuple):
        found = [i for i, e in enumerate(obj) if _is_state_dict(e)]
        if not found:
            raise CheckpointError(f"{where}: a list of {len(obj)} entries, none of them a state_dict")
        i = found[-1]
        state = obj[i]
        what = "the EMA weights" if i == len(obj) - 1 and i > 0 else "no EMA entry: the training weights"
        entry = f"entry {i} of the {len(obj)}-entry DDIM training list ({what})"
    else:
        raise CheckpointError(
            f"{where} holds a {type(obj).__name__}, not a state_dict or the DDIM training list"
        )
    if all(k.startswith("module.") for k in state):  # saved from a DataParallel-wrapped model
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state), entry


def _need(state: dict[str, Tensor], key: str, where: Path) -> Tensor:
    if key not in state:
        raise CheckpointError(f"{where}: cannot infer the architecture: missing {key}")
    return state[key]


def infer_config(
    state: dict[str, Tensor], where: Path, resolution: int | None = None
) -> tuple[UNetConfig, str]:
    """The U-Net config the weights describe, and a note on how it was found."""
    shape, attn_levels = _structure(state, where)
    for name, known in KNOWN.items():
        known_attn = [i for i, r in enumerate(known.resolutions()) if r in known.attn_resolutions]
        same = known_attn == attn_levels and all(getattr(known, k) == v for k, v in shape.items())
        if same and resolution in (None, known.resolution):
            return known, f"{name} (the official config, recognised from the weights)"
    if resolution is None:
        raise CheckpointError(
            f"{where}: not one of the known architectures ({', '.join(KNOWN)}): "
            f"{', '.join(f'{k}={v}' for k, v in shape.items())}, attention at levels {attn_levels}; "
            "give the image resolution (resolution=R)"
        )
    try:
        attn = tuple(resolution // 2**i for i in attn_levels)
        config = UNetConfig(resolution=resolution, attn_resolutions=attn, dropout=0.0, **shape)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    return config, f"inferred from the weights, resolution {resolution} given"


def _structure(state: dict[str, Tensor], where: Path) -> tuple[dict, list[int]]:
    """(UNetConfig fields read off the weights, the levels with attention).

    ch from conv_in (ch, C_in, 3, 3); levels and res blocks from the `down.i.block.j` names;
    ch_mult from each level's first conv1 (ch·mult, ·, 3, 3); attention from `down.i.attn`.
    """
    ch, in_channels = _need(state, "conv_in.weight", where).shape[:2]
    blocks = {
        tuple(map(int, m.groups())) for k in state if (m := re.match(r"down\.(\d+)\.block\.(\d+)\.", k))
    }
    levels = 1 + max((i for i, _ in blocks), default=-1)
    num_res_blocks = 1 + max((j for i, j in blocks if i == 0), default=-1)
    if levels == 0:
        raise CheckpointError(f"{where}: cannot infer the architecture: no down.<level>.block.<j> weights")
    ch_mult = []
    for i in range(levels):
        out = _need(state, f"down.{i}.block.0.conv1.weight", where).shape[0]
        if out % ch:
            raise CheckpointError(f"{where}: level {i} has {out} channels, not a multiple of ch = {ch}")
        ch_mult.append(out // ch)
    shape = {
        "in_channels": in_channels,
        "out_channels": _need(state, "conv_out.weight", where).shape[0],
        "ch": ch,
        "ch_mult": tuple(ch_mult),
        "num_res_blocks": num_res_blocks,
        "resamp_with_conv": levels == 1 or "down.0.downsample.conv.weight" in state,
    }
    return shape, [i for i in range(levels) if f"down.{i}.attn.0.q.weight" in state]
