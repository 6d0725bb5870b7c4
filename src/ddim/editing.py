"""Editing real images towards a class with a class-conditional model.

Two ways, both decoding with the target class and classifier-free guidance (`ddim.guidance`):
- inversion (the default): x_T = DDIM inversion of the image with the unconditional model (or
  the source class), then DDIM η = 0 from x_T with the target class (Song et al. 2021, §5.4:
  the latent keeps what the class does not decide, such as position, thickness and style).
  With a `strength` s the inversion stops at t ≈ s·T and the decoding starts there: the
  deterministic counterpart of SDEdit;
- SDEdit (Meng et al. 2022), `strength` s ∈ (0, 1]: noise the image to t ≈ s·T with a seeded
  draw, x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) z, and denoise from there with the target class. Small s
  keeps more of the image, s = 1 keeps almost nothing.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from ddim.execution import Execution
from ddim.guidance import Classes, class_labels
from ddim.inversion import check_images, invert
from ddim.models import Model
from ddim.plan import resolve, sub_sequence
from ddim.sampling import run, seeded_latents, target
from ddim.schedule import Spacing

EDIT_GUIDANCE = 2.0  # default w: the inverted latent pulls towards the source, guidance pulls away
EditMethod = Literal["inversion", "sdedit"]
EDIT_METHODS: tuple[str, ...] = get_args(EditMethod)


def edit(
    model: Model,
    x0: Tensor,
    to_class: Classes,
    *,
    guidance: float = EDIT_GUIDANCE,
    strength: float | None = None,
    method: EditMethod | None = None,
    from_class: Classes | None = None,
    steps: int | None = None,
    spacing: Spacing = "uniform",
    seed: int = 0,
    progress: bool = False,
    execution: Execution | None = None,
) -> Tensor:
    """Images x0 (N, *shape) in [-1, 1] edited towards `to_class` (one for all, or one per image):
    float32 (N, *shape) on the CPU.

    method="inversion" (the default without a strength): invert with `from_class` (default:
    unconditional) and decode with `to_class` over the same S-step sub-sequence — all of it, or
    with strength=s only its timesteps τ ≤ s·T. method="sdedit" (the default with a strength):
    start from the largest timestep τ ≤ s·T of the sub-sequence, image i noised with the x_T
    draw of sample i under `seed`. execution: how the network runs (device, precision, ...).
    """
    if not isinstance(model, Model) or model.num_classes is None:
        raise ValueError("editing to a class needs a class-conditional model; this one is unconditional")
    check_images(x0, model)
    to_class = _labels(model, to_class, x0.shape[0], "to_class")  # refused before any network call
    from_class = None if from_class is None else _labels(model, from_class, x0.shape[0], "from_class")
    method = edit_method(method, strength, from_class)
    seq = sub_sequence(model.schedule, steps, spacing, None)
    kept = seq if strength is None else _below(seq, strength, model.schedule.num_timesteps)
    execution = execution or Execution()
    n = x0.shape[0]
    plan = resolve(model, n, timesteps=kept, eta=0.0, seed=seed, classes=to_class, guidance=guidance)
    if method == "inversion":
        x_t = invert(model, x0, timesteps=kept, classes=from_class, progress=progress, execution=execution)
    else:
        z = seeded_latents(model.image_shape, seed, range(n))  # (N, *shape)
        x_t = model.schedule.q_sample(x0.float().cpu(), torch.full((n,), int(kept[0])), z)
    return run(target(model, execution, noise=x_t), plan, execution, n, noise=x_t, progress=progress)


def edit_method(
    method: EditMethod | None, strength: float | None, from_class: Classes | None = None
) -> EditMethod:
    """The method `edit` uses — `method`, by default SDEdit with a strength and inversion
    without — after refusing the combinations that cannot work."""
    method = method or ("inversion" if strength is None else "sdedit")
    if method not in EDIT_METHODS:
        raise ValueError(f"unknown edit method {method!r}; choose one of {', '.join(EDIT_METHODS)}")
    if method == "sdedit" and strength is None:
        raise ValueError("SDEdit needs a strength in (0, 1]: how far to noise the images")
    if method == "sdedit" and from_class is not None:
        raise ValueError(
            "from_class is for editing through inversion; SDEdit (strength) does not use it "
            "(method='inversion' takes a strength too)"
        )
    return method


def _below(seq: Tensor, strength: float, T: int) -> Tensor:
    """The timesteps τ ≤ s·T of a descending sub-sequence; at least one above t = 0, since from
    t = 0 alone an edit would return the images unchanged."""
    if isinstance(strength, bool) or not isinstance(strength, int | float) or not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    kept = seq[seq <= strength * T]
    if kept.numel() == 0 or int(kept[0]) == 0:
        above = seq[seq > 0]
        if above.numel() == 0:
            raise ValueError(f"the sub-sequence {seq.tolist()} has no timestep above 0 to edit from")
        lowest = int(above[-1])
        raise ValueError(
            f"strength {strength} is below the sub-sequence's lowest timestep above 0, {lowest} of {T} "
            f"(strength ≥ {lowest / T:g}), so nothing would be edited"
        )
    return kept


def _labels(model: Model, classes: Classes, n: int, name: str) -> Tensor:
    """`class_labels`, its error naming the argument."""
    try:
        return class_labels(model, classes, n)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
