"""Timesteps optimized per model and budget: the K-step sub-sequence that best follows a fine solve.

In the spirit of GITS (Chen et al., "A Geometric Perspective on Optimal Timesteps for Diffusion
Sampling", 2024) and Align Your Steps (Sabour et al., 2024): a fine reference solve of the
model's probability-flow ODE on a few hundred seeds gives, at every candidate timestep c_m, the
reference state x_m and the network's x̂_0 there. A step of the sampler from c_i to c_j fed
those reference states (and, for a two-step method, the reference evaluation at the previous
node c_h) lands at some x̃_j; its local error is ‖x̃_j − x_j‖ (RMS per dimension, averaged over
the seeds). A dynamic programme over the candidates finds the path c_0 = T − 1 > … > clean of K
steps with the least summed local error: a global error is at most the sum of local ones while
the steps are stable, and the sum decomposes step by step, which the programme needs.

Every sampler step is linear in the states and network outputs it reads, with coefficients
that depend only on the timesteps (eq. 12 fed the sampler's predictor). So the search needs no
network evaluation beyond the reference solve: it reads each step's coefficients off the
sampler's own predictor (`SamplerSpec.predict`, probed with unit vectors) and evaluates
‖a·v − x_j‖² from the Gram matrix of the reference vectors v, per seed. The criterion is the
sampler's predictor: exact for DDIM (one evaluation of history) and DPM-Solver++(2M) (two);
UniPC's predictor is DPM-Solver++(2M), and its corrector, which moves the reference state, is
left out of the model; PLMS and DPM-Solver++(3M) read more history than the programme's state
(the last two nodes) holds, and are refused.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from ddim import samplers
from ddim.execution import Execution
from ddim.io import save_json
from ddim.models import Model
from ddim.plan import resolve
from ddim.sampling import run, target
from ddim.schedule import NoiseSchedule, timesteps
from ddim.update import Evaluation, ddim_step

# second order: its error over the candidate grid is far below a K-step sampler's
REFERENCE_SAMPLER = "dpm-solver++"
SEARCHABLE = ("ddim", "dpm-solver++", "unipc")
# How a step's error counts: "x", the RMS distance of the state it lands on from the reference
# state; "x0", that distance times √ᾱ at the landing timestep (1 on clean data), what it moves the
# denoised estimate E[x_0 | x_t] = √ᾱ x_t by for unit-variance Gaussian data: errors at high noise,
# which change which sample is drawn more than how sharp it is, count less.
WEIGHTINGS = ("x", "x0")  # whose step the programme models (see the module's docstring)
FORMAT = "ddim-timesteps"


@dataclass(frozen=True)
class SearchResult:
    """An optimized sub-sequence and what the search measured."""

    timesteps: list[int]  # τ_K > … > τ_1, descending (the step to clean data follows)
    sampler: str  # whose step error was minimized
    weighting: str  # how each step's error counted (WEIGHTINGS)
    nfe: int
    error: float  # the summed local error of this path (RMS per dimension, mean over seeds)
    baselines: dict[str, float]  # the same criterion for the built-in spacings' K steps, where on the grid
    candidates: list[int]  # the grid searched
    n: int  # reference seeds
    seed: int
    model: str  # the model's fingerprint

    def save(self, path: str | os.PathLike) -> Path:
        """A JSON file that `--timesteps @FILE` and `read_timesteps` accept."""
        return save_json(Path(path), {"format": FORMAT, **asdict(self)})


def read_timesteps(path: str | os.PathLike) -> list[int]:
    """The timesteps of a file: a `SearchResult` JSON, or comma/space-separated integers."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read timesteps from {path}: {e}") from None
    if text.lstrip().startswith("{"):
        try:
            saved = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        values = saved.get("timesteps") if isinstance(saved, dict) else None
        if not isinstance(values, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in values
        ):
            raise ValueError(f"{path} holds no list of integer 'timesteps'")
        return values
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"{path}: expected integers separated by commas or spaces") from None


def candidate_grid(schedule: NoiseSchedule, size: int) -> list[int]:
    """About `size` candidate timesteps, descending from T − 1: half spaced evenly in t (trailing),
    half evenly in log-SNR (dense where the signal is nearly clean)."""
    T = schedule.num_timesteps
    half = max(2, size // 2)
    grid = {
        *timesteps(T, min(half, T), "trailing").tolist(),
        *timesteps(T, min(half, T), "logsnr", schedule).tolist(),
    }
    return sorted(grid | {T - 1}, reverse=True)


def optimize_timesteps(
    model: Model,
    nfe: int,
    *,
    sampler: str = "ddim",
    weighting: str = "x",
    n: int = 256,
    seed: int = 0,
    candidates: int = 100,
    execution: Execution | None = None,
    progress: bool = False,
) -> SearchResult:
    """The `nfe`-step sub-sequence of `model` whose `sampler` steps best follow a fine solve
    (see the module's docstring): n reference seeds, a grid of about `candidates` timesteps."""
    search = TimestepSearch(
        model, n=n, seed=seed, candidates=candidates, execution=execution, progress=progress
    )
    return search.best(nfe, sampler, weighting)


class TimestepSearch:
    """One reference solve of `model` (n seeds, a grid of about `candidates` timesteps), searched
    for any number of steps and any sampler of `SEARCHABLE`."""

    def __init__(
        self,
        model: Model,
        *,
        n: int = 256,
        seed: int = 0,
        candidates: int = 100,
        execution: Execution | None = None,
        progress: bool = False,
    ) -> None:
        self.model, self.n, self.seed = model, n, seed
        self.grid = candidate_grid(model.schedule, candidates)
        execution = execution or Execution()
        plan = resolve(model, n, timesteps=self.grid, sampler=REFERENCE_SAMPLER, seed=seed)
        _, traj = run(target(model, execution), plan, execution, n, progress=progress, return_trajectory=True)
        self._gram = _Gram(
            model.schedule, self.grid, traj.xt.flatten(2).double(), traj.x0.flatten(2).double()
        )
        self._costs: dict[tuple, StepCosts] = {}  # by predictor (UniPC's is DPM-Solver++(2M)'s), weighting

    def costs(self, sampler: str, weighting: str = "x") -> StepCosts:
        """The local errors of `sampler`'s steps between the grid's nodes (computed once per predictor)."""
        spec = samplers.get(sampler)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        key = (spec.predict, weighting)
        if key not in self._costs:
            self._costs[key] = StepCosts(self._gram, spec, min(spec.history, 2), weighting)
        return self._costs[key]

    def best(self, nfe: int, sampler: str = "ddim", weighting: str = "x") -> SearchResult:
        """The least-error path of `nfe` steps for `sampler`, with the built-in spacings' errors
        under the same criterion (those whose K steps lie on the grid and start at T − 1)."""
        spec = samplers.get(sampler)
        if spec.name not in SEARCHABLE:
            raise ValueError(
                f"the search models the steps of {', '.join(SEARCHABLE)}; sampler={sampler!r} reads more "
                "history than it holds (its sequence from sampler='dpm-solver++' serves it)"
            )
        if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
            raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
        if nfe > len(self.grid):
            raise ValueError(f"nfe={nfe} is more than the {len(self.grid)} candidate timesteps searched")
        costs = self.costs(spec.name, weighting)
        path, error = costs.best_path(nfe)
        schedule = self.model.schedule
        baselines = {}
        for spacing in ("uniform", "trailing", "logsnr"):
            seq = timesteps(schedule.num_timesteps, nfe, spacing, schedule).tolist()
            if set(seq) <= set(self.grid) and seq[0] == self.grid[0]:
                baselines[spacing] = costs.path_error([self.grid.index(t) for t in seq])
        return SearchResult(
            [self.grid[m] for m in path], spec.name, weighting, nfe, error, baselines, self.grid, self.n,
            self.seed, self.model.fingerprint(),
        )  # fmt: skip


class _Gram:
    """The reference vectors' inner products per seed: x at nodes 0 … C (node C is clean data),
    then x̂_0 at nodes 0 … C − 1."""

    def __init__(self, schedule: NoiseSchedule, grid: list[int], states: Tensor, x0s: Tensor) -> None:
        vectors = torch.cat([states, x0s]).transpose(0, 1)  # (n, 2C + 1, D)
        self.schedule, self.nodes = schedule, [*grid, -1]  # the grid's timesteps, then clean
        self.gram = vectors @ vectors.transpose(1, 2)  # (n, 2C + 1, 2C + 1) float64
        self.dims, self.C = states.shape[-1], len(grid)


class StepCosts:
    """Local errors of a sampler's steps between grid nodes (node C: clean data), from the
    reference Gram matrices: `pair[i, j]` for a step i → j reading node i alone (the first step,
    and every step of a one-evaluation sampler), `triple[h, i, j]` for one that also reads the
    evaluation at the previous node h; inf where the nodes do not descend in time."""

    def __init__(self, gram: _Gram, spec: samplers.SamplerSpec, order: int, weighting: str = "x") -> None:
        self.g, self.spec, self.C = gram, spec, gram.C
        self.schedule, self.grid = gram.schedule, gram.nodes
        landing = torch.tensor(  # the weight of an error on arriving at each node (WEIGHTINGS)
            [
                1.0 if weighting == "x" or t == -1 else self.schedule.alpha_bar_at(t).item() ** 0.5
                for t in self.grid
            ],
            dtype=torch.float64,
        )
        self.pair = self._costs(1) * landing  # (C, C + 1): from i with only i's evaluation, to j
        self.triple = self._costs(2) * landing if order == 2 else None  # (C, C, C + 1): h, i → j

    def _x(self, m: int) -> int:
        return m

    def _x0(self, m: int) -> int:
        return self.C + 1 + m

    def _coefficients(self, nodes: tuple[int, ...], j: int) -> tuple[list[int], Tensor]:
        """Which vectors the step from nodes[-1] to j reads (x and x̂_0 of each node), and its
        coefficients on them, read off the predictor fed unit vectors."""
        k = 2 * len(nodes)
        basis = torch.eye(k, dtype=torch.float64)
        history = []
        for q, m in enumerate(nodes):
            a = self.schedule.alpha_bar_at(self.grid[m]).item()
            x, x0 = basis[2 * q], basis[2 * q + 1]
            history.append(Evaluation(self.grid[m], x0, (x - math.sqrt(a) * x0) / math.sqrt(1 - a)))
        t_next = self.grid[j]
        a_next = 1.0 if t_next == -1 else self.schedule.alpha_bar_at(t_next).item()
        x0, eps = self.spec.predict(self.schedule, history, basis[k - 2], t_next)
        coefficients = ddim_step(x0, eps, a_next, 0.0)
        index = [f(m) for m in nodes for f in (self._x, self._x0)]
        return index, coefficients

    def _costs(self, order: int) -> Tensor:
        """RMS local error per dimension, mean over seeds, of every step reading `order` nodes;
        inf where the nodes are not strictly descending in time."""
        C = self.C
        shape = (C, C + 1) if order == 1 else (C, C, C + 1)
        out = torch.full(shape, math.inf, dtype=torch.float64)
        jobs = []
        for i in range(C):
            for j in range(i + 1, C + 1):
                if order == 1:
                    jobs.append(((i, j), (i,)))
                else:
                    jobs += [((h, i, j), (h, i)) for h in range(i)]
        for start in range(0, len(jobs), 4096):
            chunk = jobs[start : start + 4096]
            index, coef = zip(*(self._coefficients(nodes, key[-1]) for key, nodes in chunk), strict=True)
            idx = torch.tensor(index)  # (B, k)
            a = torch.stack(coef)  # (B, k)
            target = torch.tensor([self._x(key[-1]) for key, _ in chunk])  # (B,)
            g = self.g.gram[:, idx[:, :, None], idx[:, None, :]]  # (n, B, k, k)
            cross = self.g.gram[:, idx, target[:, None]]  # (n, B, k)
            err = (
                torch.einsum("bk,nbkl,bl->nb", a, g, a)
                - 2 * torch.einsum("bk,nbk->nb", a, cross)
                + self.g.gram[:, target, target]
            )
            rms = (err.clamp_min(0) / self.g.dims).sqrt().mean(0)  # (B,)
            for (key, _), value in zip(chunk, rms.tolist(), strict=True):
                out[key] = value
        return out

    def best_path(self, steps: int) -> tuple[list[int], float]:
        """The nodes 0 = n_0 > … > n_{K−1} (descending time) of least summed error ending clean."""
        C = self.C
        if self.triple is None:
            f = self.pair[0].clone()  # f[j]: best error of a path of m steps from 0 to j
            back = []
            for _ in range(steps - 1):
                total = f[:C, None] + self.pair  # (i, j)
                f, arg = total.min(0)
                back.append(arg)
            path = [C]
            for arg in reversed(back):
                path.append(int(arg[path[-1]]))
            path = path[::-1]
            return [0, *path[:-1]], float(f[C])
        g = torch.full((C, C + 1), math.inf, dtype=torch.float64)  # g[i, j]: last step i → j
        g[0] = self.pair[0]
        back = []
        for _ in range(steps - 1):
            total = g[:, :C, None] + self.triple  # (h, i, j)
            g, arg = total.min(0)  # over h
            back.append(arg)
        i = int(g[:, C].argmin())
        error = float(g[i, C])
        path = [C, i]
        for arg in reversed(back):
            path.append(int(arg[path[-1], path[-2]]))
        path = path[::-1]
        return path[:-1], error

    def path_error(self, nodes: list[int]) -> float:
        """The summed local error of the path through `nodes` (descending time) and on to clean."""
        path = [*nodes, self.C]
        total = float(self.pair[path[0], path[1]])
        for h, i, j in zip(path, path[1:], path[2:], strict=False):
            total += float(self.pair[i, j] if self.triple is None else self.triple[h, i, j])
        return total
