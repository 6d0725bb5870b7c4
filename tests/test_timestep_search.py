"""The timestep search (`ddim.timestep_search`): its step errors against steps taken directly, its
dynamic programme against exhaustive search, its file against `--timesteps @FILE`."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

import ddim
from ddim import samplers
from ddim.models.parameterization import eps_from_x0
from ddim.timestep_search import TimestepSearch, read_timesteps
from ddim.update import Evaluation, ddim_step
from helpers import run_cli

N, SEED, CANDIDATES = 6, 3, 12
# ‖a·v − x‖² from Gram matrices cancels terms of size ‖x‖² ≈ D: float64 leaves ~1e-8 RMS
FLOOR = 1e-6


@pytest.fixture(scope="module")
def toy():
    return ddim.load("toy")


@pytest.fixture(scope="module")
def search(toy):
    return TimestepSearch(toy, n=N, seed=SEED, candidates=CANDIDATES)


@pytest.fixture(scope="module")
def reference(toy, search):
    """The reference solve again, independently: states (C + 1, n, D) and x̂_0 (C, n, D)."""
    _, traj = ddim.sample(
        toy, N, timesteps=search.grid, sampler="dpm-solver++", seed=SEED, return_trajectory=True
    )
    return traj.xt.flatten(2).double(), traj.x0.flatten(2).double()


def direct_error(toy, grid, reference, sampler, nodes, j):
    """RMS per dimension, mean over seeds, of the sampler's step from nodes[-1] to node j fed
    the reference states and evaluations at `nodes`."""
    states, x0s = reference
    schedule, ts = toy.schedule, [*grid, -1]
    history = []
    for m in nodes:
        a = schedule.alpha_bar_at(ts[m]).item()
        history.append(Evaluation(ts[m], x0s[m], eps_from_x0(states[m], x0s[m], a)))
    a_next = 1.0 if ts[j] == -1 else schedule.alpha_bar_at(ts[j]).item()
    x0, eps = samplers.get(sampler).predict(schedule, history, states[nodes[-1]], ts[j])
    x = ddim_step(x0, eps, a_next, 0.0)
    return (x - states[j]).pow(2).mean(-1).sqrt().mean().item()


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++"])
def test_step_errors_equal_steps_taken_directly(toy, search, reference, sampler):
    costs = search.costs(sampler)
    C = len(search.grid)
    for i, j in [(0, 1), (0, C), (2, 7), (5, C), (C - 1, C)]:
        expected = direct_error(toy, search.grid, reference, sampler, (i,), j)
        assert costs.pair[i, j].item() == pytest.approx(expected, rel=1e-6, abs=FLOOR)
    if sampler == "ddim":
        assert costs.triple is None
        return
    for h, i, j in [(0, 1, 2), (0, 3, C), (1, 4, 9), (6, 8, 11), (9, C - 1, C)]:
        expected = direct_error(toy, search.grid, reference, sampler, (h, i), j)
        assert costs.triple[h, i, j].item() == pytest.approx(expected, rel=1e-6, abs=FLOOR)
    assert math.isinf(costs.pair[3, 3])  # not descending
    assert math.isinf(costs.triple[4, 2, 6])


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++"])
@pytest.mark.parametrize("nfe", [1, 2, 4])
def test_the_programme_finds_the_least_error_path(search, sampler, nfe):
    costs = search.costs(sampler)
    C = len(search.grid)
    best = min(costs.path_error([0, *rest]) for rest in itertools.combinations(range(1, C), nfe - 1))
    result = search.best(nfe, sampler)
    nodes = [search.grid.index(t) for t in result.timesteps]
    assert (len(nodes), nodes[0]) == (nfe, 0)
    assert result.error == pytest.approx(best, rel=1e-12)
    assert costs.path_error(nodes) == pytest.approx(best, rel=1e-12)
    assert all(result.error <= e + 1e-12 for e in result.baselines.values())


def test_unipc_is_searched_with_its_predictor_and_others_are_refused(search):
    assert search.best(3, "unipc").timesteps == search.best(3, "dpm-solver++").timesteps
    with pytest.raises(ValueError, match="sampler='plms' reads more history"):
        search.best(3, "plms")
    with pytest.raises(ValueError, match="nfe=99 is more than the"):
        search.best(99, "ddim")


def test_the_file_feeds_timesteps_at_file(capsys, tmp_path):
    out = tmp_path / "toy-3.json"
    argv = ["--model", "toy", "--nfe", "3", "--n", "4", "--candidates", "8", "--sampler", "ddim", "--quiet"]
    code, printed, _ = run_cli(capsys, "timesteps", "--optimize", *argv, "--out", out)
    assert code == 0
    saved = json.loads(out.read_text())
    assert printed.splitlines()[0] == ",".join(map(str, saved["timesteps"]))
    assert read_timesteps(out) == saved["timesteps"]
    code, printed, _ = run_cli(
        capsys, "sample", "--model", "toy", "-n", "1", "--timesteps", f"@{out}", "--dry-run"
    )
    assert code == 0
    assert json.loads(printed)["timesteps"] == saved["timesteps"]
    plain = tmp_path / "plain.txt"
    plain.write_text("999, 500 0\n")
    assert read_timesteps(plain) == [999, 500, 0]


@pytest.mark.parametrize(
    ("text", "message"),
    [("{not json", "is not valid JSON"), ('{"timesteps": [1.5]}', "no list of integer 'timesteps'"),
     ("999,abc", "expected integers separated by commas or spaces")],
)  # fmt: skip
def test_bad_timestep_files_get_one_line_errors(capsys, tmp_path, text, message):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    code, _, err = run_cli(
        capsys, "sample", "--model", "toy", "-n", "1", "--timesteps", f"@{bad}", "--dry-run"
    )
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_printing_a_spacing(capsys):
    code, printed, _ = run_cli(capsys, "timesteps", "--model", "toy", "--steps", "4", "--spacing", "trailing")
    assert code == 0
    assert printed.strip() == ",".join(map(str, ddim.timesteps(1000, 4, "trailing").tolist()))


def test_the_x0_weighting_scales_each_step_by_the_landing_sqrt_alpha_bar(toy, search):
    plain, weighted = search.costs("dpm-solver++"), search.costs("dpm-solver++", "x0")
    nodes = [*search.grid, -1]
    w = torch.tensor([1.0 if t == -1 else toy.schedule.alpha_bar_at(t).item() ** 0.5 for t in nodes])
    finite = torch.isfinite(plain.pair)
    torch.testing.assert_close(weighted.pair[finite], (plain.pair * w.double())[finite])
    finite = torch.isfinite(plain.triple)
    torch.testing.assert_close(weighted.triple[finite], (plain.triple * w.double())[finite])
    assert search.best(3, "ddim", "x0").weighting == "x0"
    with pytest.raises(ValueError, match="unknown weighting 'v'"):
        search.best(3, "ddim", "v")
