"""A model as a diffusers DDPMPipeline folder: the inverse of `ddim.convert.diffusers`.

Our U-Net is diffusers' `UNet2DModel` module for module when it is configured with DDPM's
embedding ([sin, cos], frequency shift 1), GroupNorm ε = 1e-6, one attention head and TF-style
stride-2 convolutions (`convert.diffusers.config_from_diffusers` reads exactly these fields);
the weights are renamed by `our_key_to_theirs`, attention's 1×1 convolutions becoming linear
layers. The scheduler config holds the β as `trained_betas`, so any schedule survives, with
`clip_sample` off (ddim.sample's default). diffusers' DDPM/DDIM schedulers step over the
"leading" sub-sequence t = i·T/S (T/S an integer), which is our `uniform` spacing when S divides T.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import safetensors.torch

from ddim.convert.diffusers import PREDICTIONS, WEIGHTS, is_attn_linear, our_key_to_theirs
from ddim.export.base import ExportError, require_unet
from ddim.io import OutputError, check_writable
from ddim.models import Model
from ddim.models.unet import UNetConfig

PIPELINE = {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
            "scheduler": ["diffusers", "DDPMScheduler"]}  # fmt: skip
_THEIR_PREDICTION = {ours: theirs for theirs, ours in PREDICTIONS.items()}


def unet2d_config(config: UNetConfig) -> dict:
    """The UNet2DModel config of our U-Net (the fields `convert.diffusers` reads back)."""
    if config.num_classes is not None:
        raise ExportError(
            f"diffusers export: this model is class-conditional ({config.num_classes} classes); diffusers' "
            "DDPMPipeline/DDIMPipeline take no class labels and have no classifier-free guidance"
        )
    if not config.resamp_with_conv:
        raise ExportError(
            "diffusers export: this U-Net resamples without convolutions (resamp_with_conv = false); "
            "UNet2DModel always uses strided/upsampling convolutions"
        )
    levels = range(len(config.ch_mult))
    attn = [config.resolutions()[i] in config.attn_resolutions for i in levels]
    return {
        "_class_name": "UNet2DModel",
        "sample_size": config.resolution, "in_channels": config.in_channels,
        "out_channels": config.out_channels, "center_input_sample": False,
        "time_embedding_type": "positional", "flip_sin_to_cos": False, "freq_shift": 1,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": [config.ch * m for m in config.ch_mult],
        "layers_per_block": config.num_res_blocks, "mid_block_scale_factor": 1, "downsample_padding": 0,
        "downsample_type": "conv", "upsample_type": "conv", "dropout": config.dropout, "act_fn": "silu",
        "attention_head_dim": None, "norm_num_groups": config.norm_groups, "attn_norm_num_groups": None,
        "norm_eps": 1e-6, "resnet_time_scale_shift": "default", "add_attention": True,
        "class_embed_type": None, "num_class_embeds": None, "num_train_timesteps": None,
    }  # fmt: skip


def scheduler_config(model: Model) -> dict:
    """A DDPMScheduler config with the model's exact β; DDIMPipeline makes its DDIMScheduler from it
    (set_alpha_to_one and steps_offset 0 are that class's defaults: the last step goes to ᾱ = 1)."""
    betas = model.schedule.betas.tolist()  # float64 → JSON; diffusers keeps them in float32
    return {
        "_class_name": "DDPMScheduler", "num_train_timesteps": len(betas), "trained_betas": betas,
        "beta_schedule": "linear", "beta_start": betas[0], "beta_end": betas[-1],
        "prediction_type": _THEIR_PREDICTION[model.prediction], "variance_type": "fixed_small",
        "clip_sample": False, "thresholding": False, "timestep_spacing": "leading", "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }  # fmt: skip


def to_diffusers(model: Model, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `model` as a DDPMPipeline folder `out` (atomically: built beside it, then renamed)."""
    config = require_unet(model, "diffusers")
    unet_config = unet2d_config(config)
    levels = len(config.ch_mult)
    weights = {}
    for key, value in model.net.state_dict().items():
        theirs = our_key_to_theirs(key, levels)
        weights[theirs] = (value.flatten(1) if is_attn_linear(theirs) else value).detach().cpu().contiguous()
    files = {
        "model_index.json": json.dumps(PIPELINE, indent=2).encode(),
        "unet/config.json": json.dumps(unet_config, indent=2).encode(),
        f"unet/{WEIGHTS[0]}": safetensors.torch.save(weights, metadata={"format": "pt"}),
        "scheduler/scheduler_config.json": json.dumps(scheduler_config(model), indent=2).encode(),
    }
    return write_folder(out, files, overwrite=overwrite)


def write_folder(out: str | os.PathLike, files: dict[str, bytes], *, overwrite: bool) -> Path:
    """Create the folder `out` holding `files` (relative path → bytes), or replace it with
    `overwrite`: the new folder is complete before it takes the name."""
    out = check_writable(out, folder=True)
    if out.exists() and not overwrite:
        raise OutputError(f"{out} exists; pass overwrite=True to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    old = out.with_name(f".{out.name}.old")
    try:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        os.chmod(tmp, stat.S_IMODE(out.parent.stat().st_mode))  # mkdtemp makes 0700: take the parent's
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            if old.exists():
                os.replace(old, out)  # the earlier folder back under its name
            raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write {out}: {e.strerror or e}") from None
    shutil.rmtree(old, ignore_errors=True)
    return out
