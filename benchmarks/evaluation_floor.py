"""The FID/KID floor of a dataset: a random test subset of n images against the training set,
and uniform noise for scale; also the feature extractor's speed. It measures; it asserts nothing.

    python benchmarks/evaluation_floor.py --data mnist.npz --features mnist --n 1000,2000,5000,10000
    python benchmarks/evaluation_floor.py --data mnist.npz --features inception --n 500 --ref-limit 500
    (--features-precision, --features-channels-last, --features-compile: as for `ddim evaluate`)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ddim.cli._args import add_execution_options, execution_options
from ddim.data import load_images
from ddim.metrics import feature_stats, frechet_distance, kid, load_extractor


def timed_stats(extractor, images):
    start = time.perf_counter()
    stats = feature_stats(extractor, images, batch_size=50, progress=True)
    return stats, time.perf_counter() - start


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help=".npz with x_train and x_test")
    p.add_argument("--features", default="mnist", help="inception or mnist")
    p.add_argument("--n", default="2000", help="comma-separated test subset sizes")
    p.add_argument("--ref-limit", type=int, default=None, help="a random subset of the training set")
    p.add_argument("--seed", type=int, default=0)
    add_execution_options(p, "features-", "the feature extractor")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    extractor = load_extractor(args.features, **execution_options(args, "features-"))
    train = load_images(args.data, key="x_train")
    if args.ref_limit is not None:
        train = train[torch.randperm(len(train), generator=gen)[: args.ref_limit]]
    test = load_images(args.data, key="x_test")
    ref, seconds = timed_stats(extractor, train)
    print(f"{args.features} features of {len(train)} training images: {seconds:.1f} s "
          f"({1000 * seconds / len(train):.2f} ms/image, {torch.get_num_threads()} thread(s), "
          f"{extractor.precision}{', channels-last' if extractor.channels_last else ''})")  # fmt: skip
    for n in (int(s) for s in args.n.split(",")):
        subset, _ = timed_stats(extractor, test[torch.randperm(len(test), generator=gen)[:n]])
        noise, _ = timed_stats(extractor, torch.rand((n, *test.shape[1:]), generator=gen) * 2 - 1)
        for name, stats in (("random test images", subset), ("uniform noise", noise)):
            fid = frechet_distance(ref.mu, ref.cov, stats.mu, stats.cov)
            kid_mean, kid_std = kid(stats.features, ref.features)
            print(f"n = {n:5d} {name:18s}: FID {fid:9.2f}   KID {kid_mean:.4g} ± {kid_std:.2g}")


if __name__ == "__main__":
    main()
