"""Large runs (50,000 samples for FID): sample into a folder of PNGs, one batch at a time, resumably.

Each batch is written as soon as it is sampled and then dropped, so memory holds one batch
whatever n is. Files are named by sample index (000123.png) and written atomically (`io.atomic_write`):
a file that exists is complete. A batch whose files all exist is skipped, so running a stopped
command again finishes the job without redoing finished images; a partly written batch is
sampled again in full. Sample i depends only on (seed, i), and the batches are the same runs of
indices as in an uninterrupted run (so each image also sees the same batch composition, which can
change float32 rounding), so the folder ends up byte for byte as an uninterrupted run leaves it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch import Tensor
from tqdm.auto import tqdm

from ddim.io import sample_png, save_samples
from ddim.models import Model
from ddim.sampling import sample


@dataclass(frozen=True)
class FolderRun:
    """What `sample_to_folder` did with its indices."""

    sampled: int  # images sampled and written by this call
    skipped: int  # images of finished batches found in the folder


def sample_to_folder(
    model: Model,
    out_dir: str | os.PathLike,
    indices: range,
    *,
    seed: int,
    batch_size: int,
    noise: Tensor | None = None,
    progress: bool = False,
    **options,
) -> FolderRun:
    """Samples `indices` of `seed` as PNGs in `out_dir`, batch by batch, skipping finished batches.

    Batches are indices.start + [kB, (k + 1)B), as `sample` makes them. noise: the x_T of
    `indices`, (len(indices), C, H, W), instead of seeded noise. `options` go to `sample` (steps,
    timesteps, eta, sampler, clip, device, precision, channels_last, compile, …).
    """
    if indices.step != 1:
        raise ValueError(f"indices must be a contiguous range, got {indices}")
    if noise is not None and len(noise) != len(indices):
        raise ValueError(f"noise holds {len(noise)} latents for {len(indices)} indices")
    starts = range(indices.start, indices.stop, batch_size)
    batches = [range(i, min(i + batch_size, indices.stop)) for i in starts]
    todo = [b for b in batches if not all(sample_png(out_dir, i).is_file() for i in b)]
    skipped = len(indices) - sum(len(b) for b in todo)
    with tqdm(total=len(indices), initial=skipped, disable=not progress, unit="img", desc="sampling") as bar:
        for b in todo:
            rows = None if noise is None else noise[b.start - indices.start : b.stop - indices.start]
            x = sample(model, len(b), noise=rows, seed=seed, start_index=b.start, **options)  # (B, C, H, W)
            save_samples(x, out_dir=out_dir, first_index=b.start)
            del x  # nothing outlives its batch
            bar.update(len(b))
    return FolderRun(len(indices) - skipped, skipped)
