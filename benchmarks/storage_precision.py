"""What storing a model's weights in float16 costs its samples.

    python -m benchmarks.storage_precision --model runs/mnist/model.safetensors

Rounds the checkpoint's weights to float16 and back (exactly what `ddim.save(model, path,
dtype=torch.float16)` then `ddim.load` do), samples the same seeds with both versions in
float32 and prints the differences of the final images (on the [-1, 1] scale): mean |Δ|,
relative L2 and the largest single-pixel difference. It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import copy

import torch

import ddim


def rounded(model: ddim.Model, dtype: torch.dtype) -> ddim.Model:
    """A copy of `model` whose floating-point weights went through `dtype` once."""
    net = copy.deepcopy(model.net)
    with torch.no_grad():
        for p in (*net.parameters(), *net.buffers()):
            if p.is_floating_point():
                p.copy_(p.to(dtype))
    return ddim.Model(net, model.schedule, model.image_shape, model.prediction, model.info)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a float32 checkpoint (e.g. a run's model.safetensors)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model = ddim.load(args.model)
    kwargs = {"steps": args.steps, "eta": 0.0, "seed": args.seed, "batch_size": args.n}
    full = ddim.sample(model, args.n, **kwargs)
    half = ddim.sample(rounded(model, torch.float16), args.n, **kwargs)
    diff = (half - full).abs()
    rel_l2 = (half - full).norm() / full.norm()
    print(f"{args.n} samples, S = {args.steps}, η = 0, seed {args.seed}: float16-stored vs float32 weights")
    print(f"mean |Δ| {diff.mean():.2e}, relative L2 {rel_l2:.2e}, max |Δ| {diff.max():.3f} "
          f"(at {int((diff > 0.05).sum())} of {diff.numel()} pixels |Δ| > 0.05)")  # fmt: skip


if __name__ == "__main__":
    main()
