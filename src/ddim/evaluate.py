"""Speed/quality sweeps: FID and KID of a model's samples over steps S × noise η (paper Table 1).

Every cell (S, η) samples `n` images with one seed s — sample i is drawn from the generator
(s, i), so all cells share their x_T (common random numbers) and any cell can be re-run
alone — and compares their features with the reference statistics. η = "hat" is the paper's
σ̂ (sampler "ddpm-large"). With an ODE solver (`sampler="unipc"`, …) instead of DDIM the only
column is η = 0: FID against S for that solver. Results go to `results.json` after every
cell, so an interrupted sweep resumes where it stopped; `results.csv` and `fid.png` summarise
the requested cells.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from ddim import distributed, samplers
from ddim.execution import PRECISIONS, Execution, Precision
from ddim.io import atomic_write, make_grid, save_json, save_png, to_uint8
from ddim.metrics import Extractor, FeatureStats, feature_stats, frechet_distance, kid
from ddim.models import Model
from ddim.plan import SamplePlan, resolve
from ddim.samplers import ode_solvers
from ddim.sampling import run, target
from ddim.schedule import SPACINGS, Spacing

Eta = float | Literal["hat"]
RESULTS_VERSION = 1
_IDENTITY_DEFAULTS = {"precision": "fp32", "sampler": "ddim"}  # what files from before a field existed used
SWEEP_SAMPLERS: tuple[str, ...] = ("ddim", *ode_solvers())  # "ddpm" and σ̂ are columns of the ddim sweep


@dataclass(frozen=True)
class SweepConfig:
    """The grid (steps × etas), samples per cell, their seed, and how to sample them."""

    steps: tuple[int, ...] = (10, 20, 50, 100, 1000)
    etas: tuple[Eta, ...] = (0.0, 0.2, 0.5, 1.0, "hat")
    n: int = 10_000
    seed: int = 0
    spacing: Spacing = "uniform"
    sampler: str = "ddim"  # or an ODE solver (SWEEP_SAMPLERS), with etas (0,)
    batch_size: int = 250
    kid_subset_size: int = 1000
    precision: Precision = "fp32"  # how the network runs (`sample`): precision changes the samples,
    channels_last: bool = False  # so results.json records it; the other two change rounding only
    compile: bool = False

    def __post_init__(self) -> None:
        if not self.steps or any(not isinstance(s, int) or s < 1 for s in self.steps):
            raise ValueError(f"steps must be positive integers, got {self.steps}")
        for eta in self.etas:
            if eta != "hat" and not (isinstance(eta, int | float) and 0.0 <= eta <= 1.0):
                raise ValueError(f"eta must be a number in [0, 1] or 'hat', got {eta!r}")
        if not self.etas:
            raise ValueError("etas must not be empty")
        if self.n < 2:
            raise ValueError(f"n must be >= 2 (a covariance needs two samples), got {self.n}")
        if self.seed < 0 or self.batch_size < 1 or self.kid_subset_size < 2:
            raise ValueError(
                f"need seed >= 0, batch_size >= 1, kid_subset_size >= 2; got {self.seed}, "
                f"{self.batch_size}, {self.kid_subset_size}"
            )
        if self.sampler not in SWEEP_SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SWEEP_SAMPLERS)}")
        spec = samplers.get(self.sampler)
        for eta in self.etas:
            if eta == "hat" and spec.ode:
                raise ValueError(
                    f"eta='hat' (σ̂) is a column of the ddim sweep, not of sampler {self.sampler!r}"
                )
            if eta != "hat":
                spec.check_eta(float(eta))
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {self.spacing!r}; choose one of {', '.join(SPACINGS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")

    def cells(self) -> list[tuple[int, Eta]]:
        return [(s, eta) for s in self.steps for eta in self.etas]

    def plan(self, model: Model, steps: int, eta: Eta) -> SamplePlan:
        """The sampling plan of cell (S, η): every cell shares the seed, so its x_T."""
        return resolve(
            model, steps=steps, spacing=self.spacing, seed=self.seed, **sampler_options(eta, self.sampler)
        )

    def execution(self, device: str | torch.device | None = None) -> Execution:
        return Execution(device, self.precision, self.channels_last, self.compile, self.batch_size)

    def identity(self, model: Model, reference: str, extractor: Extractor) -> dict:
        """What decides every cell's numbers besides its (S, η, seed, n): `results.json` of another
        identity is refused. The sampling fields are those the cells' plans share."""
        return {
            "model": model.fingerprint(), "reference": reference, "extractor": extractor.fingerprint,
            "spacing": self.spacing, "kid_subset_size": self.kid_subset_size,
            "precision": self.execution().precision, "sampler": self.sampler,
        }  # fmt: skip


@dataclass(frozen=True)
class Cell:
    """One measured cell: its settings (enough to re-run it alone) and its numbers."""

    steps: int
    eta: Eta
    seed: int
    n: int
    fid: float
    kid: float
    kid_std: float
    sample_seconds: float
    feature_seconds: float

    @property
    def key(self) -> str:
        return cell_key(self.steps, self.eta)


def cell_key(steps: int, eta: Eta) -> str:
    return f"S={steps},eta={eta_label(eta)}"


def eta_label(eta: Eta) -> str:
    return "hat" if eta == "hat" else f"{float(eta):g}"


def parse_eta(text: str) -> Eta:
    """'hat' (σ̂) or a number in [0, 1]."""
    if text.strip().lower() in ("hat", "σ̂"):
        return "hat"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"eta must be a number in [0, 1] or 'hat', got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"eta must be in [0, 1] or 'hat', got {text}")
    return value


def sampler_options(eta: Eta, sampler: str = "ddim") -> dict:
    """`ddim.plan.resolve` keywords for a column of Table 1 (σ̂ is the "ddpm-large" sampler), for DDIM
    or the ODE solver `sampler` (η = 0)."""
    return {"sampler": "ddpm-large"} if eta == "hat" else {"sampler": sampler, "eta": float(eta)}


@dataclass(frozen=True)
class Quality:
    """What one plan's samples measure against the reference, and what they cost."""

    fid: float
    kid: float
    kid_std: float
    sample_seconds: float
    feature_seconds: float


def plan_quality(
    model: Model,
    extractor: Extractor,
    ref: FeatureStats,
    plan: SamplePlan,
    execution: Execution,
    n: int,
    *,
    kid_subset_size: int = 1000,
    grid: str | os.PathLike | None = None,
    progress: bool = False,
) -> Quality:
    """FID and KID against `ref` of samples 0 … n − 1 of `plan` (under torchrun, each rank
    samples its shard); `grid`: also save the first 64 as a PNG grid."""
    start = time.perf_counter()
    shard = distributed.shard(n)  # under torchrun, this rank's samples; else all of them
    x = run(target(model, execution), plan, execution, len(shard), start_index=shard.start, progress=progress)
    sampled = time.perf_counter()
    stats = feature_stats(extractor, x, batch_size=execution.batch_size or 250, sharded=True)
    fid = frechet_distance(stats.mu, stats.cov, ref.mu, ref.cov)
    kid_mean, kid_std = kid(stats.features, ref.features, subset_size=kid_subset_size)
    if grid is not None and distributed.is_main():
        save_png(make_grid(to_uint8(x[:64])), grid)
    return Quality(fid, kid_mean, kid_std, round(sampled - start, 3), round(time.perf_counter() - sampled, 3))


def evaluate_cell(
    model: Model,
    extractor: Extractor,
    ref: FeatureStats,
    steps: int,
    eta: Eta,
    config: SweepConfig,
    *,
    device: str | torch.device | None = None,
    grid: str | os.PathLike | None = None,
    progress: bool = False,
) -> Cell:
    """Sample n images at (S, η) with seed `config.seed`, and their FID and KID against `ref`."""
    q = plan_quality(
        model, extractor, ref, config.plan(model, steps, eta), config.execution(device), config.n,
        kid_subset_size=config.kid_subset_size, grid=grid, progress=progress,
    )  # fmt: skip
    return Cell(
        steps, eta, config.seed, config.n, q.fid, q.kid, q.kid_std, q.sample_seconds, q.feature_seconds
    )


def load_results(path: Path, identity: dict) -> dict[str, Cell]:
    """The cells already measured in `path` (none if it does not exist) for this identity
    (model, reference and extractor); a file for another identity is an error."""
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
        cells = [
            Cell(**{k: math.nan if v is None else v for k, v in c.items()}) for c in saved["cells"]
        ]  # null: NaN
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a results file of `ddim evaluate` ({e})") from None
    for field, value in identity.items():
        theirs = saved.get("identity", {}).get(field, _IDENTITY_DEFAULTS.get(field))
        if theirs != value:
            raise ValueError(
                f"{path} holds results for another {field} ({theirs!r}, "
                f"now {value!r}); choose another output folder or pass overwrite=True"
            )
    return {c.key: c for c in cells}


def save_results(path: Path, identity: dict, cells: dict[str, Cell]) -> Path:
    payload = {"version": RESULTS_VERSION, "identity": identity, "cells": [asdict(c) for c in cells.values()]}
    return save_json(path, payload)


def run_sweep(
    model: Model,
    extractor: Extractor,
    ref: FeatureStats,
    config: SweepConfig,
    out_dir: str | os.PathLike,
    identity: dict,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    on_cell: Callable[[Cell], None] | None = None,
) -> list[Cell]:
    """Measure every cell of `config` not yet in `out_dir/results.json` (resuming a sweep), saving
    after each; returns the requested cells in order. A cell is reused only if its seed and n match.

    The sweep's progress bar counts network evaluations (n · S per cell), so its ETA weighs
    S = 1000 cells 100× more than S = 10 ones; a second bar shows the current cell's sampling.
    """
    out_dir = Path(out_dir)
    path = out_dir / "results.json"
    done = load_results(path, identity)
    is_done = {k: c.seed == config.seed and c.n == config.n for k, c in done.items()}
    todo = [(s, eta) for s, eta in config.cells() if not is_done.get(cell_key(s, eta), False)]
    with tqdm(
        total=sum(config.n * s for s, _ in todo), disable=not progress, unit="NFE", desc="sweep"
    ) as bar:
        for s, eta in todo:
            bar.set_postfix_str(f"S={s} η={eta_label(eta)}")
            grid = out_dir / "samples" / f"S{s}-eta{eta_label(eta)}.png"
            cell = evaluate_cell(
                model, extractor, ref, s, eta, config, device=device, grid=grid, progress=progress
            )
            done[cell.key] = cell
            if distributed.is_main():
                save_results(path, identity, done)
            bar.update(config.n * s)
            if on_cell is not None:
                on_cell(cell)
    return [done[cell_key(s, eta)] for s, eta in config.cells()]


def format_table(cells: Sequence[Cell], metric: Literal["fid", "kid"] = "fid") -> str:
    """Table 1's layout: one row per S, one column per η; KID as mean ± std."""
    steps = sorted({c.steps for c in cells})
    etas = list(dict.fromkeys(c.eta for c in cells))
    by_key = {c.key: c for c in cells}

    def value(c: Cell | None) -> str:
        if c is None:
            return "-"
        return f"{c.fid:.2f}" if metric == "fid" else f"{c.kid:.4g} ± {c.kid_std:.2g}"

    header = [f"{metric.upper()}  S \\ η", *("σ̂" if e == "hat" else eta_label(e) for e in etas)]
    rows = [[str(s), *(value(by_key.get(cell_key(s, e))) for e in etas)] for s in steps]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in [header, *rows])


def write_csv(cells: Sequence[Cell], path: str | os.PathLike) -> Path:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(asdict(cells[0])), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{**asdict(c), "eta": eta_label(c.eta)} for c in cells])
    return atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def minor_tick_label(value: float, mantissas: tuple[int, ...] = (2, 5)) -> str:
    """The label of a minor tick m·10ᵏ of a log axis, only for m in `mantissas` (all eight crowd)."""
    return f"{value:g}" if round(value / 10 ** math.floor(math.log10(value))) in mantissas else ""


def plot_fid(cells: Sequence[Cell], path: str | os.PathLike, title: str = "") -> Path:
    """FID against S, one line per η; both axes logarithmic (σ̂ at S = 10 is ~100× η = 0 at S = 1000)."""
    import matplotlib  # imported here: `import ddim` and the other subcommands do not need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    for eta in dict.fromkeys(c.eta for c in cells):
        line = sorted((c.steps, c.fid) for c in cells if c.eta == eta)
        label = "σ̂" if eta == "hat" else f"η = {eta_label(eta)}"
        ax.plot(*zip(*line, strict=True), marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="steps S", ylabel="FID", title=title)
    ax.set_xticks(sorted({c.steps for c in cells}), minor=False)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    for axis in (ax.xaxis, ax.yaxis):  # 10, 20, 50 rather than 10¹, 2×10¹, 5×10¹
        axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: minor_tick_label(value)))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))
