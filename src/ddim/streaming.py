"""Large runs (50,000 samples for FID): sample into a folder of PNGs, one batch at a time, resumably.

Each batch is written as soon as it is sampled and then dropped, so memory holds one batch
whatever n is. Files are named by sample index (000123.png) and written atomically (`io.atomic_write`):
a file that exists is complete. A batch whose files all exist is skipped, so running a stopped
command again finishes the job without redoing finished images; a partly written batch is
sampled again in full. Sample i depends only on (seed, i), and the batches are the same runs of
indices as in an uninterrupted run (so each image also sees the same batch composition, which can
change float32 rounding), so the folder ends up byte for byte as an uninterrupted run leaves it.

What the images are samples of (the model's weights, seed, timesteps, η, sampler, clip, precision,
given latents) is recorded in the folder (`RECORD`); a run of anything else into it is refused,
so that a folder never mixes two runs' images. Its n may differ: a folder can grow.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddim.execution import Execution
from ddim.io import sample_png, save_json, save_samples
from ddim.models import Model
from ddim.plan import SamplePlan
from ddim.sampling import MAX_SAMPLES, run, target

RECORD = ".ddim-sample.json"  # in the folder: what its images are samples of


@dataclass(frozen=True)
class FolderRun:
    """What `sample_to_folder` did with its indices."""

    sampled: int  # images sampled and written by this call
    skipped: int  # images of finished batches found in the folder


def sample_to_folder(
    model: Model,
    out_dir: str | os.PathLike,
    indices: range,
    plan: SamplePlan,
    execution: Execution,
    *,
    noise: Tensor | None = None,
    progress: bool = False,
) -> FolderRun:
    """Samples `indices` of `plan` as PNGs in `out_dir`, batch by batch, skipping finished batches.

    Batches are indices.start + [kB, (k + 1)B), B = execution.batch_size, as `run` makes them.
    noise: x_T by sample index, (N ≥ indices.stop, C, H, W), instead of seeded noise (all of
    them, also under torchrun: the folder records their hash). The plan's labels, for a
    class-conditional model, are by sample index too.
    """
    if indices.step != 1:
        raise ValueError(f"indices must be a contiguous range, got {indices}")
    if indices.stop > MAX_SAMPLES:
        raise ValueError(f"indices must stay below {MAX_SAMPLES:,}, got up to {indices.stop - 1:,}")
    if noise is not None and len(noise) < indices.stop:
        raise ValueError(f"noise holds {len(noise)} latents, too few for indices up to {indices.stop - 1}")
    if plan.labels is not None and len(plan.labels) < indices.stop:
        raise ValueError(
            f"classes holds {len(plan.labels)} labels, too few for indices up to {indices.stop - 1}"
        )
    claim_folder(model, out_dir, plan, execution, noise=noise)
    batch_size = execution.batch_size or max(len(indices), 1)
    starts = range(indices.start, indices.stop, batch_size)
    batches = [range(i, min(i + batch_size, indices.stop)) for i in starts]
    todo = [b for b in batches if not all(sample_png(out_dir, i).is_file() for i in b)]
    skipped = len(indices) - sum(len(b) for b in todo)
    goal = target(model, execution)
    with tqdm(total=len(indices), initial=skipped, disable=not progress, unit="img", desc="sampling") as bar:
        for b in todo:
            rows = None if noise is None else noise[b.start : b.stop]
            x = run(goal, plan.rows(b.start, b.stop), execution, len(b), noise=rows, start_index=b.start)
            save_samples(x, out_dir=out_dir, first_index=b.start)
            del x  # nothing outlives its batch
            bar.update(len(b))
    return FolderRun(len(indices) - skipped, skipped)


def claim_folder(
    model: Model,
    out_dir: str | os.PathLike,
    plan: SamplePlan,
    execution: Execution,
    *,
    noise: Tensor | None = None,
) -> None:
    """Refuse `out_dir` if it holds images of another run, else record this run in it: for any
    writer of sample PNGs into a folder, so that a resumed `sample_to_folder` never keeps them."""
    _claim(Path(out_dir), identity(model, plan, execution, noise))


def identity(model: Model, plan: SamplePlan, execution: Execution, noise: Tensor | None = None) -> dict:
    """Everything that decides the images: a view of the plan and the precision (batch size,
    channels-last, compile: rounding only), with the latents and labels hashed."""
    view = plan.view()
    labels = None if plan.labels is None else _digest(torch.tensor(plan.labels, dtype=torch.int64))
    latents = None if noise is None else _digest(noise.float())
    return {
        "model": model.fingerprint(), "seed": plan.seed, "latents": latents,
        "timesteps": view["timesteps"], "sampler": plan.sampler, "eta": plan.eta, "clip": plan.clip,
        "precision": execution.precision, "classes": labels, "guidance": plan.guidance,
        "dynamic_threshold": plan.dynamic_threshold,
    }  # fmt: skip


def _digest(x: Tensor) -> str:
    return hashlib.sha1(x.cpu().numpy().tobytes()).hexdigest()


def _claim(out_dir: Path, identity: dict) -> None:
    """Refuse a folder holding samples of another run; record this run's identity in it."""
    has_images = out_dir.is_dir() and any(out_dir.glob("*.png"))  # listed before the record is read
    record = out_dir / RECORD
    if record.is_file():
        try:
            theirs = json.loads(record.read_text())
            if not isinstance(theirs, dict):
                raise ValueError(f"a JSON {type(theirs).__name__}, not an object")
        except (OSError, UnicodeDecodeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{record} is not readable ({e}); delete it or choose another folder") from None
        for key, value in identity.items():
            if theirs.get(key) != value:
                shown = (
                    ""
                    if key in ("model", "latents", "classes", "timesteps")
                    else f" ({theirs.get(key)!r}, now {value!r})"
                )
                raise ValueError(
                    f"{out_dir} holds samples of another {key}{shown}; choose another folder or empty it"
                )
    elif has_images:
        raise ValueError(
            f"{out_dir} holds PNGs that no resumable run recorded; choose another folder or empty it"
        )
    save_json(record, identity)
