"""ddim: Denoising Diffusion Implicit Models (Song, Meng & Ermon, ICLR 2021) for PyTorch.

import ddim
model = ddim.load("toy")
x = ddim.sample(model, n=16, steps=50, eta=0.0, seed=0)   # (16, C, H, W) in [-1, 1]
x = ddim.sample(conditional_model, n=4, classes=[0, 1, 2, 3], guidance=2.0)   # classifier-free guidance
ddim.distill(ddim.DistillConfig(teacher="mnist", data="mnist.npz", teacher_steps=64, final_steps=4), "runs/d")
"""

from ddim import metrics
from ddim.checkpoint import CheckpointError, save
from ddim.consistency import consistency
from ddim.distill_config import DistillConfig
from ddim.distillation import distill
from ddim.editing import edit
from ddim.interpolation import interpolate, slerp
from ddim.inversion import invert, reconstruct, reconstruction_errors
from ddim.loading import builtin_names, load
from ddim.models import Model
from ddim.sampling import Trajectory, sample, seeded_latents
from ddim.schedule import NoiseSchedule, custom_timesteps, timesteps
from ddim.timestep_search import optimize_timesteps, read_timesteps

__version__ = "0.1.0"
__all__ = [
    "CheckpointError",
    "DistillConfig",
    "Model",
    "NoiseSchedule",
    "Trajectory",
    "builtin_names",
    "consistency",
    "custom_timesteps",
    "distill",
    "edit",
    "interpolate",
    "invert",
    "load",
    "metrics",
    "optimize_timesteps",
    "read_timesteps",
    "reconstruct",
    "reconstruction_errors",
    "sample",
    "save",
    "seeded_latents",
    "slerp",
    "timesteps",
]
