"""Classifier-free guidance and editing on a class-conditional MNIST model, measured with the
project's MNIST classifier (`ddim.metrics`), and the guidance grid of docs/guidance.md.

    python -m benchmarks.guidance --model runs/mnist-cond/model.safetensors --data mnist.npz \\
        --grid docs/images/mnist-guidance.png --json docs/results/guidance.json

1. Per-class accuracy: n samples of each class k (w = --guidance, S = --steps, seeds 0 … n − 1),
   the share the classifier labels k (the issue's criterion: ≥ 95 % for every k at w = 2, S = 50).
2. Editing: the first --edits test digits, digit i sent to class (y_i + 1 + i mod 9) mod 10 (never
   its own), by inversion (unconditional, and from the digit's true class as `--from-class` would),
   and with --strength s by SDEdit and by inversion to s·T only: the share labelled as the
   target, the share that stays closer to its source (RMS pixel distance) than an unrelated
   sample of the target class (seed i, same w) does, and the share that does both (the
   criterion: ≥ 80 % of the trials).
3. --grid: rows = classes, columns = w in --grid-guidance (default 0, 1, 2, 4), the same seeds in
   every column.
It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

import ddim
from ddim.cli._args import int_list
from ddim.data import load_images, load_labels, to_model_range
from ddim.editing import EDIT_GUIDANCE, edit_method
from ddim.execution import Execution
from ddim.io import atomic_write, make_grid, save_png, to_uint8
from ddim.metrics import load_extractor


@dataclass(frozen=True)
class EditResult:
    method: str  # "inversion", "inversion from the source class", "sdedit s" or "inversion to s"
    n: int
    guidance: float
    success: float  # share of edits the classifier labels as the target class
    closer: float  # share of edits closer to their source than the unrelated target-class sample
    both: float  # share of edits that are labelled as the target and closer
    distance_edit: float  # mean RMS pixel distance, edit ↔ source, on [-1, 1]
    distance_unrelated: float  # mean RMS pixel distance, unrelated sample ↔ source
    seconds: float


def classify(classifier: nn.Module, x: Tensor) -> Tensor:
    """The classifier's labels (N,) of images (N, 1, 28, 28) in [-1, 1] (clamped, as a PNG would be)."""
    with torch.no_grad():
        return torch.cat([classifier(x[i : i + 500].clamp(-1, 1)).argmax(1) for i in range(0, len(x), 500)])


def class_accuracy(
    model: ddim.Model, classifier: nn.Module, n: int, steps: int, guidance: float, batch_size: int = 250
) -> list[float]:
    """For each class k, the share of its n samples (seeds 0 … n − 1) the classifier labels k."""
    shares = []
    for k in range(model.num_classes):
        x = ddim.sample(model, n, steps=steps, seed=0, classes=k, guidance=guidance, batch_size=batch_size)
        shares.append((classify(classifier, x) == k).double().mean().item())
    return shares


def edit_targets(y: Tensor) -> Tensor:
    """The class digit i is edited to: (y_i + 1 + i mod 9) mod 10, never its own."""
    return (y + 1 + torch.arange(len(y)) % 9) % 10


def unrelated_samples(
    model: ddim.Model, y: Tensor, steps: int, guidance: float, batch_size: int = 250
) -> Tensor:
    """Sample i of digit i's target class (seed (0, i)), to compare an edit's distance with."""
    target = edit_targets(y).tolist()
    return ddim.sample(
        model, len(y), steps=steps, seed=0, classes=target, guidance=guidance, batch_size=batch_size
    )


def edit_trials(
    model: ddim.Model, classifier: nn.Module, x0: Tensor, y: Tensor, steps: int, guidance: float,
    strength: float | None = None, method: str | None = None, from_source: bool = False,
    unrelated: Tensor | None = None, batch_size: int = 250,
) -> EditResult:  # fmt: skip
    """Edit digit i to class (y_i + 1 + i mod 9) mod 10 and score the edits (see the module docstring);
    `strength`, `method`: as `ddim.edit`'s; `from_source`: invert with the digit's true class y_i;
    `unrelated`: the target-class samples (`unrelated_samples`, drawn here if None)."""
    start = time.perf_counter()
    target = edit_targets(y)
    source = y.tolist() if from_source else None
    x = ddim.edit(model, x0, target.tolist(), guidance=guidance, strength=strength, method=method,
                  steps=steps, from_class=source, execution=Execution(batch_size=batch_size))  # fmt: skip
    if unrelated is None:
        unrelated = unrelated_samples(model, y, steps, guidance, batch_size)
    d_edit = (x.clamp(-1, 1) - x0).pow(2).flatten(1).mean(1).sqrt()  # (N,), on the images as saved
    d_unrelated = (unrelated.clamp(-1, 1) - x0).pow(2).flatten(1).mean(1).sqrt()
    method = edit_method(method, strength)
    if method == "sdedit":
        method = f"sdedit {strength:g}"
    else:
        method += ("" if strength is None else f" to {strength:g}") + from_source * " from the source class"
    hit, closer = classify(classifier, x) == target, d_edit < d_unrelated
    return EditResult(
        method, len(y), guidance, hit.double().mean().item(), closer.double().mean().item(),
        (hit & closer).double().mean().item(), d_edit.mean().item(), d_unrelated.mean().item(),
        time.perf_counter() - start,
    )  # fmt: skip


def guidance_grid(model: ddim.Model, path: Path, ws: list[float], per_cell: int = 1, steps: int = 50) -> Path:
    """Rows = classes, columns = w (per_cell samples each, seeds 0 … per_cell − 1 in every column)."""
    rows = []
    for k in range(model.num_classes):
        cells = [ddim.sample(model, per_cell, steps=steps, seed=0, classes=k, guidance=w) for w in ws]
        rows.append(torch.cat(cells))
    grid = make_grid(to_uint8(torch.cat(rows)), nrow=len(ws) * per_cell, scale=2)
    return save_png(grid, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a class-conditional MNIST checkpoint")
    p.add_argument("--data", type=Path, required=True, help="mnist.npz (x_test, y_test) for the edits")
    p.add_argument("--n", type=int, default=100, help="samples per class (default: 100)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=2.0, help="w of the per-class accuracy (default: 2)")
    p.add_argument("--edits", type=int, default=100, help="test digits to edit (default: 100)")
    p.add_argument("--edit-guidance", type=float, default=EDIT_GUIDANCE)
    p.add_argument(
        "--strength", type=float, default=None, help="also measure SDEdit and inversion to this strength"
    )
    p.add_argument("--grid", type=Path, default=None, help="write the guidance grid here")
    p.add_argument("--grid-guidance", type=int_list, default=[0, 1, 2, 4])
    p.add_argument("--per-cell", type=int, default=1, help="samples per cell of the grid")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    model = ddim.load(args.model)
    classifier = load_extractor("mnist").net.eval()
    start = time.perf_counter()
    shares = class_accuracy(model, classifier, args.n, args.steps, args.guidance)
    seconds = time.perf_counter() - start
    print(
        f"{args.model}: {args.n} samples per class, S = {args.steps}, w = {args.guidance:g} ({seconds:.0f} s)"
    )
    print("labelled as their class: " + ", ".join(f"{k}: {100 * s:.1f} %" for k, s in enumerate(shares)))
    print(f"lowest: {100 * min(shares):.1f} % (class {shares.index(min(shares))})")

    channels, size, _ = model.image_shape
    x0 = load_images(args.data, key="x_test", resolution=size, channels=channels, limit=args.edits)
    x0 = to_model_range(x0)
    y = load_labels(args.data, key="y_test", limit=args.edits)[0]
    unrelated = unrelated_samples(model, y, args.steps, args.edit_guidance)
    trial = partial(
        edit_trials, model, classifier, x0, y, args.steps, args.edit_guidance, unrelated=unrelated
    )
    edits = [trial(from_source=False), trial(from_source=True)]
    if args.strength is not None:
        edits += [trial(strength=args.strength), trial(strength=args.strength, method="inversion")]
    for r in edits:
        print(
            f"edit ({r.method}, w = {r.guidance:g}, {r.n} digits): {100 * r.success:.1f} % labelled as the "
            f"target; {100 * r.closer:.1f} % closer to the source than an unrelated target sample "
            f"(RMS {r.distance_edit:.3f} vs {r.distance_unrelated:.3f}); both: {100 * r.both:.1f} % "
            f"({r.seconds:.0f} s)"
        )
    if args.grid is not None:
        print(f"wrote {guidance_grid(model, args.grid, args.grid_guidance, args.per_cell, args.steps)}")
    if args.json is not None:
        report = {
            "model": str(args.model), "n_per_class": args.n, "steps": args.steps, "guidance": args.guidance,
            "class_accuracy": shares, "edits": [asdict(r) for r in edits],
        }  # fmt: skip
        atomic_write(args.json, lambda f: f.write(json.dumps(report, indent=2).encode()))


if __name__ == "__main__":
    main()
