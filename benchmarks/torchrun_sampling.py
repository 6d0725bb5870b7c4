"""Sampling speed of 2 processes (torchrun, gloo, 1 thread each) against 1 process (2 threads).

    python -m benchmarks.torchrun_sampling --model mnist -n 128 --steps 20 --repeats 3

Runs the two variants alternately (the machine is shared and noisy) and prints each run's
sampling time as `ddim sample` reports it (rank 0, sampling + gather) and the whole command's
wall time (including interpreter and process-group start-up), then the medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time


def run(cmd: list[str], threads: int) -> tuple[float, float]:
    """(sampling seconds reported by ddim sample, wall seconds of the whole command)."""
    start = time.perf_counter()
    result = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)}
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(result.stderr[-2000:])
    return float(re.search(r"steps, ([0-9.]+) s", result.stdout)[1]), wall


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mnist")
    p.add_argument("-n", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = tempfile.mkdtemp()
    common = ["-m", "ddim", "sample", "--model", args.model, "-n", str(args.n), "--steps", str(args.steps),
              "--batch-size", str(args.batch_size), "--npz", f"{out}/x.npz", "--quiet"]  # fmt: skip
    variants = {
        "1 process x 2 threads": ([sys.executable, *common], 2),
        "2 processes x 1 thread": (
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *common],
            1,
        ),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for i in range(args.repeats):
        for name, (cmd, threads) in variants.items():
            times[name].append(run(cmd, threads))
            print(f"run {i + 1} {name}: sampling {times[name][-1][0]:.1f} s, wall {times[name][-1][1]:.1f} s")
    medians = {name: [statistics.median(t[k] for t in ts) for k in (0, 1)] for name, ts in times.items()}
    for name, (s, w) in medians.items():
        print(f"median {name}: sampling {s:.1f} s, wall {w:.1f} s")
    (s1, w1), (s2, w2) = medians.values()
    print(f"speed-up of 2 processes: sampling {s1 / s2:.2f}x, wall {w1 / w2:.2f}x")


if __name__ == "__main__":
    main()
