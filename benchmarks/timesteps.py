"""Optimized timesteps (`ddim timesteps --optimize`) against the built-in spacings, by FID.

    python -m benchmarks.timesteps --model mnist --ref mnist.npz --out docs/results/timesteps-mnist.json

One reference solve (--search-n seeds of --search-seed, a grid of --candidates timesteps) serves
every search: for each NFE, the least-error path for each criterion (DDIM's step,
DPM-Solver++(2M)'s: UniPC's predictor) and each weighting of the step errors. Then every
sampler × sequence (trailing, logsnr, and each optimized one) samples n images with seed
--seed — other seeds than the search's — whose FID against the reference set (`mnist`
features: what `ddim evaluate --features mnist` measures) is one cell. The JSON is rewritten
after each cell; a cell already in --out with the same model, n, seed, precision and
timesteps is kept.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

import ddim
from ddim.data import load_images
from ddim.evaluate import plan_quality
from ddim.execution import PRECISIONS, Execution
from ddim.io import atomic_write
from ddim.metrics import cached_feature_stats, load_extractor
from ddim.plan import resolve
from ddim.timestep_search import TimestepSearch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mnist")
    p.add_argument("--ref", type=Path, required=True, help="reference images (.npz)")
    p.add_argument("--ref-key", default="x_train")
    p.add_argument("--features", default="mnist")
    p.add_argument("--nfe", default="5,10", help="budgets, comma-separated (default: 5,10)")
    p.add_argument("--samplers", default="ddim,dpm-solver++,unipc")
    p.add_argument("--spacings", default="trailing,logsnr", help="built-in spacings to compare")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--search-n", type=int, default=256)
    p.add_argument("--search-seed", type=int, default=1)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--criteria", default="ddim,dpm-solver++", help="whose step each search fits")
    p.add_argument(
        "--weightings", default="x", help="how step errors count (ddim.timestep_search.WEIGHTINGS)"
    )
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "ddim" / "stats")
    p.add_argument("--out", type=Path, default=Path("runs/timesteps.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = ddim.load(args.model)
    execution = Execution(precision=args.precision, batch_size=args.batch_size)
    identity = {"model": model.fingerprint(), "n": args.n, "seed": args.seed, "precision": args.precision,
                "reference": f"{args.ref.name}:{args.ref_key}", "features": args.features}  # fmt: skip
    saved = json.loads(args.out.read_text()) if args.out.is_file() else {}
    kept = saved.get("cells", []) if saved.get("identity") == identity else []
    extractor = load_extractor(args.features)
    c, h, _ = model.image_shape
    ref, _ = cached_feature_stats(
        extractor, load_images(args.ref, key=args.ref_key, resolution=h, channels=c), args.cache_dir,
        label=args.ref.stem,
    )  # fmt: skip
    start = time.perf_counter()
    search = TimestepSearch(
        model, n=args.search_n, seed=args.search_seed, candidates=args.candidates, execution=execution
    )
    reference_seconds = round(time.perf_counter() - start, 1)
    searches = saved.get("search", {}).get("results", []) if kept else []  # earlier searches stay listed
    sequences: dict[tuple[int, str], list[int]] = {}
    for nfe in map(int, args.nfe.split(",")):
        for spacing in args.spacings.split(","):
            seq = ddim.timesteps(model.schedule.num_timesteps, nfe, spacing, model.schedule).tolist()
            sequences[nfe, spacing] = seq
        for criterion, weighting in itertools.product(args.criteria.split(","), args.weightings.split(",")):
            t0 = time.perf_counter()
            result = search.best(nfe, criterion, weighting)
            searches.append({
                "nfe": nfe, "criterion": criterion, "weighting": weighting, "timesteps": result.timesteps,
                "error": result.error, "baselines": result.baselines,
                "seconds": round(time.perf_counter() - t0, 1),
            })  # fmt: skip
            name = f"optimized-{criterion}" + ("" if weighting == "x" else f"-{weighting}")
            sequences[nfe, name] = result.timesteps
            print(
                f"NFE {nfe} {name}: {result.timesteps} error {result.error:.4f} {result.baselines}",
                flush=True,
            )
    report = {
        "identity": identity, "search": {"n": args.search_n, "seed": args.search_seed, "grid": search.grid,
                                         "reference_seconds": reference_seconds, "results": searches},
        "threads": torch.get_num_threads(),
    }  # fmt: skip
    cells = {(c["sampler"], c["sequence"], c["nfe"]): c for c in kept}
    for (nfe, name), seq in sequences.items():
        for sampler in args.samplers.split(","):
            key = (sampler, name, nfe)
            if cells.get(key, {}).get("timesteps") == seq:
                continue
            plan = resolve(model, timesteps=seq, sampler=sampler, seed=args.seed)
            q = plan_quality(model, extractor, ref, plan, execution, args.n)
            cells[key] = {"sampler": sampler, "sequence": name, "nfe": nfe, "timesteps": seq, "fid": q.fid,
                          "kid": q.kid, "kid_std": q.kid_std, "seconds": q.sample_seconds}  # fmt: skip
            print(
                f"NFE {nfe} {sampler:13s} {name:22s} FID {q.fid:6.2f} ({q.sample_seconds:.0f} s)", flush=True
            )
            payload = {**report, "cells": list(cells.values())}
            atomic_write(args.out, lambda f, payload=payload: f.write(json.dumps(payload, indent=1).encode()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
