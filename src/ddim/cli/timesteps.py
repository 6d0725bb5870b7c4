"""`ddim timesteps`: a spacing's sub-sequence, or one optimized for a model, a budget and a sampler."""

from __future__ import annotations

import argparse
import time

from ddim.cli._args import execution, int_at_least, output_file
from ddim.cli._images import add_model_options, sub_sequence_of
from ddim.loading import load
from ddim.timestep_search import SEARCHABLE, TimestepSearch

EXAMPLES = """examples:
  ddim timesteps --model mnist --steps 10 --spacing trailing         print a spacing's timesteps
  ddim timesteps --optimize --model mnist --nfe 10 --sampler dpm-solver++ --out mnist-10.json
  ddim sample --model mnist --sampler unipc --timesteps @mnist-10.json
"""


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "timesteps",
        help="print a timestep sub-sequence, or search the best one for a model and a step budget",
        description="Without --optimize: the sub-sequence that --steps and --spacing give for the "
        "model. With --optimize: solve the model's ODE finely on --n seeds over a grid of about "
        "--candidates timesteps, and find by dynamic programming the --nfe-step path whose "
        "--sampler steps stay closest to that solve (summed local error; docs/samplers.md). The "
        "file it writes is read back by --timesteps @FILE of sample, evaluate and the others.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--optimize", action="store_true", help="search the sub-sequence (else: print a spacing's)"
    )
    p.add_argument(
        "--steps", type=int_at_least(1), default=50, help="without --optimize: steps S (default: 50)"
    )
    p.add_argument(
        "--nfe", type=int_at_least(1), default=10, help="--optimize: network evaluations (default: 10)"
    )
    p.add_argument(
        "--sampler", choices=SEARCHABLE, default="dpm-solver++",
        help="--optimize: whose steps to fit (unipc's predictor is dpm-solver++'s; default: dpm-solver++)",
    )  # fmt: skip
    p.add_argument(
        "--n", type=int_at_least(2), default=256, help="--optimize: reference seeds (default: 256)"
    )
    p.add_argument("--seed", type=int_at_least(0), default=0, help="--optimize: their seed (default: 0)")
    p.add_argument(
        "--candidates", type=int_at_least(4), default=100,
        help="--optimize: about this many candidate timesteps (default: 100)",
    )  # fmt: skip
    p.add_argument("--out", type=output_file, default=None, help="--optimize: write the result (JSON) here")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load(args.model)
    if not args.optimize:
        print(",".join(str(t) for t in sub_sequence_of(args, model).tolist()))
        return 0
    start = time.perf_counter()
    search = TimestepSearch(
        model, n=args.n, seed=args.seed, candidates=args.candidates, execution=execution(args),
        progress=not args.quiet,
    )  # fmt: skip
    result = search.best(args.nfe, args.sampler)
    seconds = time.perf_counter() - start
    print(",".join(map(str, result.timesteps)))
    errors = ", ".join(f"{k} {v:.4f}" for k, v in result.baselines.items())
    print(
        f"summed local error {result.error:.4f} ({args.sampler}, NFE {args.nfe}; "
        f"{errors or 'no spacing on the grid'}), {len(result.candidates)} candidates, {seconds:.0f} s"
    )
    if args.out is not None:
        print(f"wrote {result.save(args.out)}: use it with --timesteps @{args.out}")
    return 0
