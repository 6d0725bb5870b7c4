"""Distilled students against their teacher: FID, recognisability and wall time per sample.

    python -m benchmarks.distilled --ref mnist.npz --teacher mnist --teacher-steps 32 \
        --students runs/mnist-distill/students --out docs/results/distilled-mnist.json

Every model samples the same n seeds (seed --seed); a student on the timesteps it was distilled
for (its default), the teacher with DDIM η = 0 on the `trailing` grid of --teacher-steps (the
grid its first student learned from). FID against the reference set with the `mnist` features
(what `ddim evaluate --features mnist` measures), and the share of samples the MNIST classifier
names with confidence ≥ 0.9, with each digit's share (benchmarks/recognisable.py's criteria).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ddim
from benchmarks.recognisable import classify
from ddim.data import load_images
from ddim.execution import PRECISIONS, Execution
from ddim.io import atomic_write
from ddim.metrics import cached_feature_stats, feature_stats, frechet_distance, load_extractor
from ddim.plan import resolve
from ddim.sampling import run, target


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", type=Path, required=True, help="reference images (.npz)")
    p.add_argument("--ref-key", default="x_train")
    p.add_argument("--teacher", default="mnist")
    p.add_argument("--teacher-steps", type=int, default=32)
    p.add_argument("--students", type=Path, required=True, help="a folder of students (.safetensors)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "ddim" / "stats")
    p.add_argument("--out", type=Path, default=Path("runs/distilled.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    execution = Execution(precision=args.precision, batch_size=args.batch_size)
    extractor = load_extractor("mnist")
    teacher = ddim.load(args.teacher)
    c, h, _ = teacher.image_shape
    images = load_images(args.ref, key=args.ref_key, resolution=h, channels=c)
    ref, _ = cached_feature_stats(extractor, images, args.cache_dir, label=args.ref.stem)
    students = [(f"student {f.stem}", ddim.load(f), None) for f in args.students.glob("*.safetensors")]
    students.sort(key=lambda row: -len(row[1].default_timesteps or ()))  # most steps first
    rows = []
    for name, model, steps in [(f"teacher {args.teacher}", teacher, args.teacher_steps), *students]:
        spacing = "trailing" if steps is not None else "uniform"
        plan = resolve(model, args.n, steps=steps, spacing=spacing, seed=args.seed)
        start = time.perf_counter()
        x = run(target(model, execution), plan, execution, args.n)
        seconds = time.perf_counter() - start
        stats = feature_stats(extractor, x, batch_size=args.batch_size)
        confident, shares = classify(x)
        rows.append({
            "model": name, "timesteps": plan.timesteps, "nfe": plan.steps, "n": args.n, "seed": args.seed,
            "fid": frechet_distance(stats.mu, stats.cov, ref.mu, ref.cov), "confident": confident,
            "class_shares": shares, "seconds": round(seconds, 2),
            "ms_per_image": round(1000 * seconds / args.n, 3),
        })  # fmt: skip
        r = rows[-1]
        digits = f"{100 * min(shares):.1f}-{100 * max(shares):.1f} %"
        print(f"{name}: NFE {r['nfe']}, FID {r['fid']:.2f}, confident {100 * confident:.1f} %, "
              f"digits {digits}, {r['ms_per_image']:.2f} ms/image", flush=True)  # fmt: skip
        payload = {"precision": args.precision, "threads": torch.get_num_threads(), "rows": rows}
        atomic_write(args.out, lambda f, payload=payload: f.write(json.dumps(payload, indent=1).encode()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
