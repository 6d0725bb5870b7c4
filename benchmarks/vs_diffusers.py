"""The same weights sampled by diffusers' DDIM loop and by `ddim.sample`: outputs and throughput.

A randomly initialised diffusers `UNet2DModel` with google/ddpm-cifar10-32's config is saved as a
diffusers folder and imported with our converter (`ddim.load`, src/ddim/convert/diffusers.py).
Both sides start from the same x_T and run the same S timesteps (ours "uniform" = diffusers'
"leading" when S divides T = 1000): diffusers' `DDIMScheduler` loop, as its DDIMPipeline runs it
(`unet(x, t).sample`, then `scheduler.step`), against our `sample` in fp32 and in other execution
variants. Run by `python -m benchmarks.sampling` (its diffusers section).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

import ddim
from benchmarks.sampling import copy_model
from ddim.models import Model
from ddim.sampling import seeded_latents

# google/ddpm-cifar10-32 config.json (huggingface.co/google/ddpm-cifar10-32), diffusers 0.42 fields
DDPM_CIFAR10_32 = {
    "_class_name": "UNet2DModel", "act_fn": "silu", "add_attention": True, "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False, "class_embed_type": None,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32,
    "num_class_embeds": None, "out_channels": 3, "resnet_time_scale_shift": "default", "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}  # fmt: skip
# the same block types at a size that runs in milliseconds: attention at 8×8 of 16×16
SMALL = {**DDPM_CIFAR10_32, "block_out_channels": [16, 32, 32, 32], "layers_per_block": 1,
         "norm_num_groups": 8, "sample_size": 16}  # fmt: skip
CONFIGS = {"ddpm-cifar10-32": DDPM_CIFAR10_32, "small": SMALL}
T, BETA_START, BETA_END = 1000, 1e-4, 0.02  # google/ddpm-cifar10-32's scheduler


def imported_pair(config: dict, folder: Path) -> tuple[UNet2DModel, Model]:
    """(a random diffusers UNet2DModel of `config`, the same network imported by `ddim.load`)."""
    torch.manual_seed(0)
    unet = UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    unet.save_pretrained(folder / "unet")
    DDPMScheduler(
        num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END, beta_schedule="linear"
    ).save_pretrained(folder / "scheduler")
    return unet, ddim.load(folder / "unet")


def diffusers_loop(unet: UNet2DModel, x_T: torch.Tensor, steps: int) -> torch.Tensor:
    """diffusers' deterministic DDIM (η = 0), configured to mean what ours means."""
    scheduler = DDIMScheduler(
        num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END, beta_schedule="linear",
        clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading",
    )  # fmt: skip
    scheduler.set_timesteps(steps)
    x = x_T
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return x


def compare(
    config: str,
    variants: dict[str, dict],
    *,
    steps: int,
    batch_size: int,
    repeats: int,
    device: torch.device,
    timed: Callable[[Callable[[], object]], float],
) -> dict:
    """diffusers' fp32 loop against `ddim.sample` in each variant (execution options by name):
    median seconds over repeats in which all of them alternate, and the outputs' differences."""
    with tempfile.TemporaryDirectory() as folder:
        unet, model = imported_pair(CONFIGS[config], Path(folder))
    unet.to(device)
    x_T = seeded_latents(model.image_shape, 0, range(batch_size)).to(device)  # (B, C, H, W)
    ours = {name: copy_model(model) for name in variants}

    def run_ours(name: str) -> torch.Tensor:
        options = variants[name]
        return ddim.sample(ours[name], noise=x_T, steps=steps, eta=0.0, device=device, **options)

    runs = {"diffusers": lambda: diffusers_loop(unet, x_T, steps)} | {
        name: (lambda name=name: run_ours(name)) for name in variants
    }
    outputs = {name: run().float().cpu() for name, run in runs.items()}  # warm-up (and compile)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(repeats):
        for name in runs if r % 2 == 0 else reversed(runs):  # alternate, reversing to cancel drift
            seconds[name].append(timed(runs[name]))
    theirs = outputs["diffusers"]
    result = {
        "config": config, "parameters": model.num_parameters, "steps": steps, "batch_size": batch_size,
        "diffusers": {"seconds": statistics.median(seconds["diffusers"]),
                      "images_per_s": batch_size / statistics.median(seconds["diffusers"])},
        "ours": [],
    }  # fmt: skip
    for name, options in variants.items():
        ratios = [d / o for d, o in zip(seconds["diffusers"], seconds[name], strict=True)]
        diff = (outputs[name] - theirs).abs().max().item()
        result["ours"].append({
            "variant": name, **options, "seconds": statistics.median(seconds[name]),
            "images_per_s": batch_size / statistics.median(seconds[name]),
            "throughput_vs_diffusers": statistics.median(ratios),
            "max_abs_diff": diff, "max_rel_diff": diff / theirs.abs().max().item(),
        })  # fmt: skip
    return result
