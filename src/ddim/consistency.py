"""The consistency of DDIM's latent space, measured (Song, Meng & Ermon 2021, §5.2, Fig. 5).

With η = 0 the image is a deterministic function of x_T, and samples from the same x_T with
S = 10, 20, 50, 100 steps share their high-level features with the S = 1000 sample: only
details change. With η = 1 (DDPM-like) the fresh noise of every step makes the image a random
function of x_T, and the same x_T gives unrelated images. The figure of merit here is the
RMS pixel distance between each S's image and the reference (S = 1000) image of the same
x_T, on [-1, 1] data, averaged over images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ddim.execution import Execution
from ddim.models import Model
from ddim.plan import resolve
from ddim.sampling import check_n, run, target


@dataclass(frozen=True)
class ConsistencyRow:
    eta: float
    steps: int  # S
    distance: float  # mean over images of the RMS pixel distance to the reference image
    sem: float  # its standard error over the images


@dataclass(frozen=True)
class Consistency:
    rows: list[ConsistencyRow]
    reference: int  # the S of the reference images
    images: dict[float, Tensor]  # η → (len(steps) + 1, n, C, H, W): each S, then the reference


def consistency(
    model: Model,
    n: int = 16,
    steps: Sequence[int] = (10, 20, 50, 100),
    *,
    reference: int = 1000,
    etas: Sequence[float] = (0.0, 1.0),
    seed: int = 0,
    progress: bool = False,
    execution: Execution | None = None,
) -> Consistency:
    """Sample the same n latents (seed) at each S and at `reference` steps, for each η; measure
    each S's distance to the reference images. execution: how the network runs."""
    execution = execution or Execution()
    goal, n = target(model, execution), check_n(n, None)

    def draw(S: int, eta: float) -> Tensor:  # (n, C, H, W)
        return run(goal, resolve(model, n, steps=S, eta=eta, seed=seed), execution, n, progress=progress)

    rows, images = [], {}
    for eta in etas:
        ref = draw(reference, eta)
        per_s = [draw(S, eta) for S in steps]
        for S, x in zip(steps, per_s, strict=True):
            rms = (x - ref).pow(2).flatten(1).mean(1).sqrt()  # (n,)
            sem = rms.std().item() / math.sqrt(n) if n > 1 else math.nan
            rows.append(ConsistencyRow(float(eta), S, rms.mean().item(), sem))
        images[float(eta)] = torch.stack([*per_s, ref])
    return Consistency(rows, reference, images)
