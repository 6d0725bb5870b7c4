"""Inception features at CPU speed: ms/image of each execution variant, and the FID change each causes.

In one run: (1) speed, every variant on the same batch of CIFAR-10 images, in rounds that
alternate the variants (the machine is shared: medians over the rounds, ratios against the
fp32 one-thread path, the extractor as it ran before it was batched and multi-threaded);
(2) quality, the features of three image sets under every variant with its own numerics, and
the FID of real test images vs train and of model samples vs train, against fp32's.
It measures; it asserts nothing.

    python benchmarks/inception.py --data ../shared/data/cifar10.npz --n 500 \\
        --out docs/results/inception-speed.json

"Model samples": no CIFAR-10 model exists yet, so they come from the analytic model of
`ddim.toy`: the exact denoiser of a mixture of isotropic Gaussians (std --mixture-std) centred
on --mixture-size CIFAR-10 test images (disjoint from the real test subset), sampled by DDIM
(η = 0, S = --sample-steps): colour images that carry a sampler's errors, at a model-like FID.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import ddim
from ddim.data import load_images, to_model_range
from ddim.io import save_json
from ddim.metrics import Extractor, feature_stats, frechet_distance, load_extractor
from ddim.toy import MixtureDenoiser

# name → (threads, execution options); "fp32 1 thread" is the path before this benchmark's work
VARIANTS = {
    "fp32 1 thread": (1, {"precision": "fp32", "channels_last": False}),
    "fp32": (2, {"precision": "fp32", "channels_last": False}),
    "fp32 + channels-last": (2, {"precision": "fp32", "channels_last": True}),
    "bf16": (2, {"precision": "bf16", "channels_last": False}),
    "bf16 + channels-last": (2, {"precision": "bf16", "channels_last": True}),
    "bf16 + channels-last 1 thread": (1, {"precision": "bf16", "channels_last": True}),
    "bf16 + channels-last + compile": (2, {"precision": "bf16", "channels_last": True, "compile": True}),
}
BASELINE, REFERENCE = "fp32 1 thread", "fp32"
SAME_NUMERICS = {"fp32 1 thread": "fp32", "bf16 + channels-last 1 thread": "bf16 + channels-last"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="CIFAR-10 .npz with x_train and x_test")
    p.add_argument("--n", type=int, default=500, help="images per set for the FIDs")
    p.add_argument("--batch-size", type=int, default=50, help="images per network call")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds (each times every variant once)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    p.add_argument("--fid-variants", default=None, help="variants whose FIDs are measured (default: all)")
    p.add_argument("--mixture-size", type=int, default=1000)
    p.add_argument("--mixture-std", type=float, default=0.1)
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="result .json")
    return p.parse_args(argv)


def image_sets(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Real test and train subsets (uint8) and mixture samples (in [-1, 1]), n of each."""
    gen = torch.Generator().manual_seed(args.seed)
    train = load_images(args.data, key="x_train")
    test = load_images(args.data, key="x_test")
    order = torch.randperm(len(test), generator=gen)
    means = to_model_range(test[order[: args.mixture_size]]).double()  # (K, 3, 32, 32)
    net = MixtureDenoiser(ddim.NoiseSchedule.linear(), means, args.mixture_std).eval()
    samples = ddim.sample(
        net, args.n, shape=(3, 32, 32), schedule=ddim.NoiseSchedule.linear(), steps=args.sample_steps,
        seed=args.seed, batch_size=25,
    ).clamp(-1, 1)  # fmt: skip
    return {
        "train": train[torch.randperm(len(train), generator=gen)[: args.n]],
        "test": test[order[args.mixture_size : args.mixture_size + args.n]],
        "samples": samples.float(),
    }


def time_variants(extractors: dict[str, Extractor], batch: torch.Tensor, rounds: int) -> dict[str, list]:
    """ms/image of each variant on `batch`, `rounds` times, the variants alternating in each round."""
    times: dict[str, list] = {name: [] for name in extractors}
    for name, ext in extractors.items():  # warm-up: first-call costs (and compiling) are not timed
        torch.set_num_threads(VARIANTS[name][0])
        start = time.perf_counter()
        ext(batch)
        print(f"warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
    for r in range(rounds):
        for name, ext in extractors.items():
            torch.set_num_threads(VARIANTS[name][0])
            start = time.perf_counter()
            ext(batch)
            times[name].append(1000 * (time.perf_counter() - start) / len(batch))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in times.items()), flush=True)
    return times


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    names = args.variants.split(",")
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    extractors = {}
    for name in names:  # each variant its own network: channels-last converts its weights in place
        options = {"compile": False, **VARIANTS[name][1]}
        extractors[name] = replace(load_extractor("inception", batch_size=args.batch_size), **options)
    sets = image_sets(args)
    batch = to_model_range(sets["test"][: args.batch_size])
    times = time_variants(extractors, batch, args.rounds)
    fid_names = [n for n in (args.fid_variants or args.variants).split(",") if n not in SAME_NUMERICS]
    fids: dict[str, dict] = {}
    for name in fid_names:
        torch.set_num_threads(VARIANTS[name][0])
        start = time.perf_counter()
        stats = {k: feature_stats(extractors[name], x, batch_size=args.batch_size) for k, x in sets.items()}
        fids[name] = {
            f"{k} vs train": frechet_distance(
                stats[k].mu, stats[k].cov, stats["train"].mu, stats["train"].cov
            )
            for k in ("test", "samples")
        }
        fids[name]["seconds"] = round(time.perf_counter() - start, 1)
        print(f"{name}: {fids[name]}", flush=True)
    base_ms = statistics.median(times[BASELINE]) if BASELINE in times else None
    rows = {}
    for name in names:
        ms = statistics.median(times[name])
        fid = fids.get(SAME_NUMERICS.get(name, name))
        row = {"ms_per_image": round(ms, 1), "all_ms": [round(t, 1) for t in times[name]]}
        if base_ms is not None:
            row["speed-up vs fp32 1 thread"] = round(base_ms / ms, 2)
        if fid is not None and REFERENCE in fids:
            for k in ("test vs train", "samples vs train"):
                row[f"FID {k}"] = round(fid[k], 3)
                row[f"FID {k} change %"] = round(100 * (fid[k] / fids[REFERENCE][k] - 1), 3)
        rows[name] = row
        print(name, row)
    payload = {
        "command": "python benchmarks/inception.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "n_per_set": args.n, "batch_size": args.batch_size, "rounds": args.rounds,
        "threads_available": os.cpu_count(), "load_average_at_end": os.getloadavg(),
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "samples": f"DDIM η = 0, S = {args.sample_steps}, of the exact denoiser of a Gaussian mixture "
        f"(std {args.mixture_std}) centred on {args.mixture_size} CIFAR-10 test images",
        "variants": rows,
    }  # fmt: skip
    save_json(args.out, payload)
    print(json.dumps(payload, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
