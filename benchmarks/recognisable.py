"""Are a model's digits recognisable? DDIM samples classified by the project's MNIST classifier.

    python -m benchmarks.recognisable --model mnist --n 1000 --steps 50 --eta 0 --seed 0

Prints the share of samples classified with confidence ≥ 0.9 and the share of each digit
(the model card's criteria: ≥ 90 % confident, every digit between 5 % and 15 %); --json writes
them. A class-conditional model samples unconditionally (its null class), or with --conditional
sample i of class i mod 10 at guidance --guidance (w = 1: the plain conditional model).
It measures; it asserts nothing (tests/test_shipped_model.py does, on the shipped model).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import ddim
from ddim.io import atomic_write
from ddim.metrics import load_extractor


@dataclass(frozen=True)
class Recognisability:
    n: int
    steps: int
    eta: float
    seed: int
    confident: float  # share of samples whose top class has probability >= threshold
    threshold: float
    conditional: bool  # sample i of class i mod 10, guidance w (else unconditional)
    guidance: float
    class_shares: list[float]  # share of samples predicted as each digit 0-9
    seconds: float


@torch.no_grad()
def measure(
    model: ddim.Model, n: int = 1000, steps: int = 50, eta: float = 0.0, seed: int = 0,
    threshold: float = 0.9, conditional: bool = False, guidance: float = 1.0, batch_size: int = 250,
    progress: bool = False,
) -> Recognisability:  # fmt: skip
    """Sample n images and classify them (the MNIST classifier of `ddim.metrics`, 28×28 input);
    `conditional`: sample i of class i mod 10 with guidance w."""
    start = time.perf_counter()
    labels = {"classes": [i % 10 for i in range(n)], "guidance": guidance} if conditional else {}
    x = ddim.sample(
        model, n, steps=steps, eta=eta, seed=seed, batch_size=batch_size, progress=progress, **labels
    )
    seconds = time.perf_counter() - start
    confident, shares = classify(x, threshold)
    w = guidance if conditional else 0.0
    return Recognisability(n, steps, eta, seed, confident, threshold, conditional, w, shares, seconds)


def classify(x: torch.Tensor, threshold: float = 0.9) -> tuple[float, list[float]]:
    """The share of samples x (n, 1, 28, 28) in [-1, 1] that the MNIST classifier names with
    confidence ≥ threshold, and the share of each digit 0-9 among its predictions."""
    classifier = load_extractor("mnist").net.eval()
    with torch.no_grad():
        probs = torch.cat([classifier(x[i : i + 500]).softmax(1) for i in range(0, len(x), 500)])  # (n, 10)
    top, label = probs.max(1)
    shares = torch.bincount(label, minlength=10).double() / len(x)
    return (top >= threshold).double().mean().item(), shares.tolist()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mnist", help="built-in name or checkpoint (default: mnist)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--conditional", action="store_true", help="sample i of class i mod 10")
    p.add_argument("--guidance", type=float, default=1.0, help="w with --conditional (default: 1)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model = ddim.load(args.model)
    r = measure(model, args.n, args.steps, args.eta, args.seed, conditional=args.conditional,
                guidance=args.guidance, progress=True)  # fmt: skip
    how = f"class i mod 10, w = {r.guidance:g}" if r.conditional else "unconditional"
    print(
        f"{args.model}: {r.n} samples ({how}), S = {r.steps}, η = {r.eta}, seed {r.seed} ({r.seconds:.0f} s)"
    )
    print(f"classified with confidence >= {r.threshold}: {100 * r.confident:.1f} %")
    print("share of each digit: " + ", ".join(f"{d}: {100 * s:.1f} %" for d, s in enumerate(r.class_shares)))
    if args.json:
        atomic_write(args.json, lambda f: f.write(json.dumps(asdict(r), indent=2).encode()))


if __name__ == "__main__":
    main()
