"""Quality per network evaluation (NFE): DDIM, DPM-Solver++(2M), UniPC and PLMS × timestep spacing.

    python -m benchmarks.samplers                                    # toy part: exact, minutes
    python -m benchmarks.samplers --part mnist --n 2000              # FID of the shipped model: hours

Every cell (sampler, spacing, budget S) samples with `ddim.sample(..., steps=S)`, one network
evaluation per step, so NFE = S (fewer when the spacing repeats timesteps, which the tables
show); every cell starts sample i from the same x_T (seed (0, i)), so cells differ only by the
sampler.

Toy part: analytic Gaussian mixtures (`ddim.toy`), whose exact E[ε | x_t] stands in for a
perfectly trained network, so the only error left is the sampler's.
  ring    8 Gaussians, std 0.05, on a circle of radius 0.8 in 2-D;
  glyphs  the glyphs of `ddim.toy.toy_model` at 8×8 pixels (D = 64), pixel noise 0.1.
Quality, each with its floor (the score of n exact draws of the data, what a perfect sampler
would get):
  mode_w2  per-mode moment error: samples join their nearest mode; the W2 distance per dimension
           between each mode's fitted and true Gaussian, averaged with the true weights
           (mode_tv, the total variation of the modes' shares, is in the JSON);
  sw2      the sliced Wasserstein-2 distance between the n samples and n exact draws, over 128
           fixed random directions (dominated by the random shares of the modes at this n);
  ode_rms  the RMS distance of the first --n-ode samples from the exact ODE solution from the
           same x_T (`toy.probability_flow`): the pure discretization error, no floor.

MNIST part: FID (and KID, for cells measured since it is recorded) of n samples of the shipped
model against the training set, each cell measured by `ddim.evaluate.evaluate_cell` (`mnist`
features: what `ddim evaluate --sampler` measures), with the floor of n random test images;
the JSON is rewritten after each cell. Both parts keep the cells of the JSON already in --out
(measured with the same settings and model, or else refused without --overwrite), so a run
adds only what is missing: a new sampler, spacing, budget or toy problem; a cell whose
timesteps have changed is measured again.

Each part writes OUT/samplers-PART.json and .md (tables) and PLOT (quality vs NFE, one line per
sampler, one panel per spacing).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

import ddim
from ddim.execution import PRECISIONS
from ddim.io import atomic_write
from ddim.samplers import ode_solvers
from ddim.schedule import NoiseSchedule, timesteps
from ddim.toy import MixtureDenoiser, glyphs, probability_flow

SAMPLERS = ("ddim", *ode_solvers())
SPACINGS = ("uniform", "quadratic", "trailing", "logsnr")
BUDGETS = (5, 10, 15, 20, 50)
PROBLEMS = {"ring": 20_000, "glyphs": 5_000}  # toy problems and their default samples per cell
METRICS = {"toy": ("mode_w2", "sw2", "ode_rms"), "mnist": ("fid",)}  # the first is the headline
DEFAULT_OUT = Path("docs/results")
MNIST_IDENTITY = ("fingerprint", "reference", "n", "seed", "precision")  # what a kept cell must share


@dataclass(frozen=True)
class Grid:
    samplers: tuple[str, ...]
    spacings: tuple[str, ...]
    budgets: tuple[int, ...]

    def cells(self) -> Iterator[tuple[str, str, int]]:
        for sampler in self.samplers:
            for spacing in self.spacings:
                for budget in self.budgets:
                    yield sampler, spacing, budget


def covering(results: list[dict]) -> Grid:
    """The grid of every cell in `results`: samplers and spacings in the usual order, budgets sorted."""
    cells = [c for r in results for c in r["cells"]]

    def present(key: str, order: tuple[str, ...]) -> tuple[str, ...]:
        values = {c[key] for c in cells}
        return tuple(sorted(values, key=lambda v: (order.index(v) if v in order else len(order), v)))

    return Grid(
        present("sampler", SAMPLERS),
        present("spacing", SPACINGS),
        tuple(sorted({c["budget"] for c in cells})),
    )


def toy_problem(name: str, schedule: NoiseSchedule) -> MixtureDenoiser:
    if name == "ring":
        angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        return MixtureDenoiser(schedule, 0.8 * torch.stack([angle.cos(), angle.sin()], 1), 0.05)
    return MixtureDenoiser(schedule, glyphs(8), 0.1)  # "glyphs": `toy_identity` refuses other names


def sliced_w2(a: Tensor, b: Tensor, directions: Tensor) -> float:
    """√(mean over the directions θ of W2²(θ·a, θ·b)) for a, b (n, *shape) with the same n:
    the 1-D W2 between two equal-size samples pairs their sorted values."""
    pa = (a.flatten(1).double() @ directions).sort(0).values  # (n, K)
    pb = (b.flatten(1).double() @ directions).sort(0).values
    return (pa - pb).pow(2).mean().sqrt().item()


def mode_moments(x: Tensor, net: MixtureDenoiser) -> dict[str, float]:
    """Per-mode moment errors: each sample joins its nearest mixture mean; for each mode k, the
    W2 distance per dimension between N(m̂_k, ŝ_k² I), fitted to its samples (ŝ_k² the mean
    per-dimension variance), and the true N(μ_k, s_k² I): √(‖m̂_k − μ_k‖²/D + (ŝ_k − s_k)²).
    mode_w2 averages them in square with the true weights (∞ if a mode got < 2 samples);
    mode_tv = ½ Σ |f̂_k − w_k| for the share f̂_k of the samples in each mode."""
    x = x.flatten(1).double()  # (n, D)
    means = net.means.flatten(1)  # (K, D)
    nearest = torch.cdist(x, means).argmin(1)  # (n,)
    w2, tv = 0.0, 0.0
    for k, (mu, s, w) in enumerate(zip(means, net.stds.tolist(), net.weights.tolist(), strict=True)):
        xs = x[nearest == k]  # (n_k, D)
        tv += abs(len(xs) / len(x) - w) / 2
        if len(xs) < 2:
            return {"mode_w2": math.inf, "mode_tv": tv}
        fitted_std = xs.var(0).mean().sqrt().item()
        w2 += w * ((xs.mean(0) - mu).pow(2).mean().item() + (fitted_std - s) ** 2)
    return {"mode_w2": math.sqrt(w2), "mode_tv": tv}


def random_directions(dim: int, k: int = 128, seed: int = 0) -> Tensor:
    d = torch.randn(dim, k, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return d / d.norm(dim=0)  # (D, K) unit columns


def toy_identity(name: str, args: argparse.Namespace) -> dict:
    """What a kept toy result must share with this run."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown toy problem {name!r}; choose from {', '.join(PROBLEMS)}")
    n = args.n or PROBLEMS[name]
    return {
        "problem": name,
        "n": n,
        "n_ode": min(args.n_ode, n),
        "seed": args.seed,
        "rk4_steps": args.rk4_steps,
    }


def run_toy(name: str, grid: Grid, args: argparse.Namespace, saved: dict | None) -> dict:
    """Every cell of the grid on one toy problem, with the noise floor and the ODE reference's
    accuracy; the cells of `saved` (an earlier result of the same problem and settings) are kept."""
    identity = toy_identity(name, args)
    n, n_ode, seed, rk4_steps = (identity[k] for k in ("n", "n_ode", "seed", "rk4_steps"))
    schedule = NoiseSchedule.linear()
    net = toy_problem(name, schedule)
    shape = net.config.shape
    x_T = ddim.seeded_latents(shape, seed, range(n))  # what sample(seed=seed) starts sample i from
    data = [net.sample_data(n, torch.Generator().manual_seed(seed + k))[0] for k in (1, 2)]
    directions = random_directions(math.prod(shape))
    quality = lambda x: {"sw2": sliced_w2(x, data[0], directions), **mode_moments(x, net)}  # noqa: E731
    references: dict[int, Tensor] = {}  # start timestep → exact ODE solution of x_T[:n_ode]

    def reference(start: int) -> Tensor:
        if start not in references:
            a = schedule.alpha_bar_at(start).item()
            references[start] = probability_flow(net, x_T[:n_ode], a, 1.0, rk4_steps)
        return references[start]

    cells = _kept_cells(saved, identity, args.overwrite)
    for sampler, spacing, budget in grid.cells():
        ts = timesteps(schedule.num_timesteps, budget, spacing, schedule)
        if cells.get((sampler, spacing, budget), {}).get("timesteps") == ts.tolist():
            continue
        start = time.perf_counter()
        x = ddim.sample(
            net, noise=x_T, schedule=schedule, timesteps=ts, sampler=sampler, seed=seed,
            batch_size=args.batch_size or 4000,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        ode = (x[:n_ode].double() - reference(int(ts[0]))).pow(2).mean().sqrt().item()
        cells[sampler, spacing, budget] = cell = {
            "sampler": sampler, "spacing": spacing, "budget": budget, "nfe": len(ts),
            "timesteps": ts.tolist(), **quality(x), "ode_rms": ode, "seconds": round(seconds, 2),
            "threads": torch.get_num_threads(),
        }  # fmt: skip
        scores = ", ".join(f"{k} {cell[k]:.4g}" for k in ("mode_w2", "mode_tv", "sw2", "ode_rms"))
        print(f"{name} {sampler:12s} {spacing:9s} NFE {len(ts):2d}: {scores}", flush=True)
    check = probability_flow(net, x_T[:n_ode], schedule.alpha_bar[-1].item(), 1.0, 2 * rk4_steps)
    return {
        **identity, "shape": list(shape), "floor": quality(data[1]),
        "reference_error": (check - reference(schedule.num_timesteps - 1)).abs().max().item(),
        "cells": list(cells.values()),
    }  # fmt: skip


def run_mnist(args: argparse.Namespace, grid: Grid, path: Path) -> dict:
    """FID of every cell not yet in `path` (an earlier run of the same model, reference, n, seed
    and precision, whose cells are kept), and the floor: n random test images against the reference."""
    from ddim.data import load_images
    from ddim.evaluate import SweepConfig, evaluate_cell
    from ddim.metrics import cached_feature_stats, feature_stats, frechet_distance, load_extractor

    model = ddim.load(args.model)
    identity = dict(zip(MNIST_IDENTITY, (model.fingerprint(), f"{args.ref}:{args.ref_key}", args.n,
                                         args.seed, args.precision), strict=True))  # fmt: skip
    cells = _kept_cells(_read_json(path), identity, args.overwrite)  # refused before any work
    extractor = load_extractor("mnist")
    c, h, _ = model.image_shape
    images = load_images(args.ref, key=args.ref_key, resolution=h, channels=c)
    ref, _ = cached_feature_stats(extractor, images, args.cache_dir, label=args.ref.stem)
    test = load_images(args.ref, key="x_test", resolution=h, channels=c)
    floor = feature_stats(
        extractor, test[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[: args.n]]
    )
    report = {
        "model": str(args.model), **identity,
        "floor": {"fid": frechet_distance(floor.mu, floor.cov, ref.mu, ref.cov)},
    }  # fmt: skip
    for sampler, spacing, budget in grid.cells():
        ts = timesteps(model.schedule.num_timesteps, budget, spacing, model.schedule)
        if cells.get((sampler, spacing, budget), {}).get("timesteps") == ts.tolist():
            continue
        config = SweepConfig(
            steps=(budget,), etas=(0.0,), n=args.n, seed=args.seed, spacing=spacing, sampler=sampler,
            batch_size=args.batch_size or 250, precision=args.precision, compile=args.compile,
        )  # fmt: skip
        cell = evaluate_cell(model, extractor, ref, budget, 0.0, config)  # what `ddim evaluate` measures
        cells[sampler, spacing, budget] = {
            "sampler": sampler, "spacing": spacing, "budget": budget, "nfe": len(ts),
            "timesteps": ts.tolist(), "fid": cell.fid, "kid": cell.kid, "kid_std": cell.kid_std,
            "seconds": round(cell.sample_seconds, 1), "threads": torch.get_num_threads(),
            "compile": args.compile,  # the first compiled cell's seconds include the compilation
        }  # fmt: skip
        _write_json(path, {**report, "cells": list(cells.values())})
        label = f"mnist {sampler:12s} {spacing:9s} NFE {len(ts):2d}"
        print(f"{label}: FID {cell.fid:.2f} ({cell.sample_seconds:.0f} s)", flush=True)
    return {**report, "cells": list(cells.values())}


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _kept_cells(saved: dict | None, identity: dict, overwrite: bool) -> dict[tuple[str, str, int], dict]:
    """The cells of an earlier result, by (sampler, spacing, budget); the caller measures a kept
    cell again only if its timesteps changed. An earlier result of another identity (results
    from before the precision was recorded are fp32) is an error, unless `overwrite`."""
    if saved is None:
        return {}
    for key, value in identity.items():
        theirs = {"precision": "fp32", **saved}.get(key)
        if theirs != value and not overwrite:
            raise ValueError(
                f"--out holds results for another {key} ({theirs!r}, now {value!r}); "
                "pass --overwrite to replace them, or choose another --out"
            )
        if theirs != value:
            return {}
    return {(c["sampler"], c["spacing"], c["budget"]): c for c in saved["cells"]}


def _write_json(path: Path, payload: dict) -> Path:
    return atomic_write(path, lambda f: f.write(json.dumps(payload, indent=1).encode()))


FORMATS = {"mode_w2": "{:.4f}", "sw2": "{:.4f}", "ode_rms": "{:.1e}", "fid": "{:.2f}"}
LABELS = {"mode_w2": "per-mode W2", "sw2": "sliced W2", "ode_rms": "RMS error vs exact ODE", "fid": "FID"}
CAPTIONS = {
    "mode_w2": "Per-mode moment error (W2 per dimension between fitted and true modes):",
    "sw2": "Sliced Wasserstein-2 distance to exact draws of the data:",
    "ode_rms": "RMS distance from the exact ODE solution from the same x_T:",
    "fid": "FID (`mnist` features) against the reference set:",
}


def markdown(result: dict, metric: str, grid: Grid) -> str:
    """One table: a row per (sampler, spacing), a column per budget (the NFE in brackets where the
    spacing dropped repeated timesteps); the floor underneath, if the metric has one."""
    by_cell = {(c["sampler"], c["spacing"], c["budget"]): c for c in result["cells"]}
    fmt = FORMATS[metric]
    lines = [
        "| sampler | spacing | " + " | ".join(f"NFE {b}" for b in grid.budgets) + " |",
        "|---|---|" + "---:|" * len(grid.budgets),
    ]
    for sampler in grid.samplers:
        for spacing in grid.spacings:
            cells = [by_cell.get((sampler, spacing, b)) for b in grid.budgets]
            text = [
                "—"
                if c is None
                else fmt.format(c[metric]) + ("" if c["nfe"] == c["budget"] else f" ({c['nfe']})")
                for c in cells
            ]
            lines.append(f"| {sampler} | {spacing} | " + " | ".join(text) + " |")
    if metric in result["floor"]:
        floor = fmt.format(result["floor"][metric])
        lines.append(f"| floor | (n = {result['n']}) | " + " | ".join([floor] * len(grid.budgets)) + " |")
    return "\n".join(lines)


def report(result: dict, metrics: tuple[str, ...], grid: Grid) -> str:
    """The markdown of one problem: a table per metric, and the best cells of the first."""
    parts = [f"### {result.get('problem', 'mnist')}"]
    for metric in metrics:
        parts += [CAPTIONS[metric], markdown(result, metric, grid)]
    parts += [f"Best cell per budget ({metrics[0]}):", best_per_budget(result, metrics[0], grid)]
    return "\n\n".join(parts)


def best_per_budget(result: dict, metric: str, grid: Grid) -> str:
    """For each budget: DDIM's best cell and the best cell of all."""
    lines = ["| NFE | best DDIM | best overall |", "|---:|---|---|"]
    for budget in grid.budgets:
        cells = [c for c in result["cells"] if c["budget"] == budget]
        ddim_cells = [c for c in cells if c["sampler"] == "ddim"]
        best = [min(group, key=lambda c: c[metric]) if group else None for group in (ddim_cells, cells)]
        text = ["—" if c is None else f"{c[metric]:.4g} ({c['sampler']}, {c['spacing']})" for c in best]
        lines.append(f"| {budget} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def plot(results: list[dict], metric: str, grid: Grid, path: Path, label: Callable[[dict], str]) -> Path:
    """Quality vs NFE: a row of panels per result (problem), a panel per spacing, a line per sampler."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter, NullFormatter, NullLocator

    from ddim.evaluate import minor_tick_label

    rows, cols = len(results), len(grid.spacings)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, sharey="row")
    for r, result in enumerate(results):
        for s, spacing in enumerate(grid.spacings):
            ax = axes[r][s]
            for sampler in grid.samplers:
                line = sorted(
                    (c["nfe"], c[metric])
                    for c in result["cells"]
                    if (c["sampler"], c["spacing"]) == (sampler, spacing)
                )
                if line:
                    ax.plot(*zip(*line, strict=True), marker="o", ms=3, label=sampler)
            ax.axhline(
                result["floor"][metric], color="gray", ls="--", lw=1, label=f"floor (n = {result['n']})"
            )
            ax.set(xscale="log", yscale="log", title=f"{label(result)}, {spacing}")
            ax.set_xticks(list(grid.budgets), [str(b) for b in grid.budgets])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.grid(True, which="both", alpha=0.3)
            if r == rows - 1:
                ax.set_xlabel("network evaluations (NFE)")
            if s == 0:
                ax.set_ylabel(LABELS[metric])
    some_minor = FuncFormatter(lambda value, _: minor_tick_label(value, (2, 3, 5)))
    for ax in axes.flat:  # little more than a decade shown: label the minor ticks 2, 3, 5 too
        low, high = ax.get_ylim()
        ax.yaxis.set_minor_formatter(some_minor if high / low < 30 else NullFormatter())
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("toy", "mnist"), default="toy")
    p.add_argument(
        "--samplers", default=",".join(SAMPLERS), help="comma-separated (default: ddim and every ODE solver)"
    )
    p.add_argument("--spacings", default=",".join(SPACINGS), help="comma-separated (default: all four)")
    p.add_argument(
        "--budgets", default=",".join(map(str, BUDGETS)), help="steps = NFE (default: 5,10,15,20,50)"
    )
    p.add_argument("--problems", default=",".join(PROBLEMS), help="toy problems (default: ring,glyphs)")
    p.add_argument(
        "--n", type=int, default=None, help="samples per cell (default: ring 20000, glyphs 5000, mnist 2000)"
    )
    p.add_argument("--n-ode", type=int, default=300, help="toy: samples compared with the exact ODE solution")
    p.add_argument("--rk4-steps", type=int, default=400, help="toy: RK4 steps of the exact ODE solution")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="mnist", help="mnist: built-in name or checkpoint (default: mnist)")
    p.add_argument("--ref", type=Path, default=Path("../shared/data/mnist.npz"), help="mnist: reference .npz")
    p.add_argument("--ref-key", default="x_train", help="mnist: reference array (default: x_train)")
    p.add_argument("--cache-dir", type=Path, default=None, help="mnist: reference statistics cache")
    p.add_argument("--batch-size", type=int, default=None, help="(default: toy 4000, mnist 250)")
    p.add_argument(
        "--precision", choices=PRECISIONS, default="fp32", help="mnist: how the network runs (default: fp32)"
    )
    p.add_argument(
        "--compile", action="store_true", help="mnist: torch.compile the network (rounding changes only)"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the JSON and markdown")
    p.add_argument(
        "--overwrite", action="store_true", help="replace results in --out measured with other settings"
    )
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="(default: docs/images/samplers-PART.png, or in --out if given)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    split = lambda text: tuple(s for s in text.replace(" ", "").split(",") if s)  # noqa: E731
    grid = Grid(split(args.samplers), split(args.spacings), tuple(int(b) for b in split(args.budgets)))
    metrics, json_path = METRICS[args.part], args.out / f"samplers-{args.part}.json"
    start = time.perf_counter()
    try:
        if args.part == "toy":  # the problems not run this time stay as they were
            problems = {p["problem"]: p for p in (_read_json(json_path) or {}).get("problems", [])}
            for name in split(args.problems):  # refuse any unknown problem or other settings first
                _kept_cells(problems.get(name), toy_identity(name, args), args.overwrite)
            for name in split(args.problems):
                problems[name] = run_toy(name, grid, args, problems.get(name))
                _write_json(json_path, {"problems": list(problems.values())})
            results = list(problems.values())
            payload = {"problems": results}
        else:
            args.n = args.n or 2000
            results = [run_mnist(args, grid, json_path)]
            payload = results[0]
    except ValueError as e:
        sys.exit(f"benchmarks.samplers: error: {e}")
    payload["sampling_seconds"] = round(sum(c["seconds"] for r in results for c in r["cells"]))
    _write_json(json_path, payload)
    shown = covering(results)  # this run's cells and the ones it kept
    text = "\n\n".join(report(r, metrics, shown) for r in results)
    atomic_write(json_path.with_suffix(".md"), lambda f: f.write((text + "\n").encode()))
    default_plot = Path("docs/images") if args.out == DEFAULT_OUT else args.out  # the docs' own run, or OUT
    image = plot(results, metrics[0], shown, args.plot or default_plot / f"samplers-{args.part}.png",
                 lambda r: r.get("problem", "MNIST"))  # fmt: skip
    print(text)
    print(f"wrote {json_path}, {json_path.with_suffix('.md')}, {image} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
