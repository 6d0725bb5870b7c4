"""benchmarks/samplers.py: the toy part on a small grid (its report, that the discretisation
error falls with the budget for every sampler and spacing, and that later runs keep the cells
and problems already measured, measure a cell again whose timesteps changed, and refuse to
replace results of other settings without --overwrite), and which earlier MNIST cells a run
keeps (only those of the same model, reference, n, seed and precision)."""

import json

import pytest
from benchmarks.samplers import MNIST_IDENTITY, SAMPLERS, SPACINGS, _kept_cells, main


def test_toy_report_convergence_and_kept_cells(tmp_path, capsys):
    common = ["--problems", "ring", "--n", "400", "--n-ode", "50", "--rk4-steps", "100",
              "--out", str(tmp_path), "--plot", str(tmp_path / "plot.png")]  # fmt: skip
    main([*common, "--budgets", "5,50", "--samplers", "ddim,plms"])
    main([*common, "--budgets", "5,50"])  # adds the other solvers' cells
    (ring,) = json.loads((tmp_path / "samplers-toy.json").read_text())["problems"]
    assert (tmp_path / "samplers-toy.md").read_text() in capsys.readouterr().out
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")
    assert (ring["problem"], ring["n"], ring["n_ode"]) == ("ring", 400, 50)
    cells = {(c["sampler"], c["spacing"], c["budget"]): c for c in ring["cells"]}
    assert set(cells) == {(a, s, b) for a in SAMPLERS for s in SPACINGS for b in (5, 50)}
    for (sampler, spacing, budget), cell in cells.items():
        assert 0 < cell["nfe"] == len(cell["timesteps"]) <= budget
        if budget == 5:  # ten times the steps: a smaller distance from the exact ODE solution
            assert cells[sampler, spacing, 50]["ode_rms"] < cell["ode_rms"], (sampler, spacing)
    assert ring["reference_error"] < 1e-3
    capsys.readouterr()
    main([*common, "--budgets", "5", "--samplers", "unipc"])  # measured already: nothing is sampled
    out = capsys.readouterr().out
    assert "ring unipc" not in out
    assert "| plms | logsnr |" in out  # the report and plot still show every cell kept
    assert "NFE 50" in out
    saved = json.loads((tmp_path / "samplers-toy.json").read_text())
    stale = next(c for c in saved["problems"][0]["cells"] if (c["sampler"], c["budget"]) == ("plms", 5))
    stale["timesteps"] = [999, 0]  # as if the spacing's code had changed since
    (tmp_path / "samplers-toy.json").write_text(json.dumps(saved))
    main([*common, "--budgets", "5", "--samplers", "plms"])
    assert capsys.readouterr().out.count("ring plms") == 1  # only the stale cell
    other_n = [*common, "--budgets", "5", "--n", "300", "--samplers", "ddim"]
    with pytest.raises(SystemExit, match=r"another n \(400, now 300\); pass --overwrite"):
        main(other_n)
    main([*other_n, "--overwrite"])
    assert capsys.readouterr().out.count("ring ddim") == len(SPACINGS)
    glyphs = ["--problems", "glyphs", "--n", "100", "--n-ode", "10", "--rk4-steps", "50", "--budgets", "5",
              "--samplers", "ddim", "--out", str(tmp_path)]  # fmt: skip
    with pytest.raises(SystemExit, match="unknown toy problem 'moons'"):  # before any work
        main([*glyphs[:1], "glyphs,moons", *glyphs[2:]])
    main(glyphs)
    assert (tmp_path / "samplers-toy.png").read_bytes().startswith(b"\x89PNG")  # the plot goes with --out
    problems = json.loads((tmp_path / "samplers-toy.json").read_text())["problems"]
    assert [(p["problem"], p["n"], len(p["cells"])) for p in problems] == [
        ("ring", 300, 4),
        ("glyphs", 100, 4),
    ]


IDENTITY = {"fingerprint": "abc", "reference": "mnist.npz:x_train", "n": 100, "seed": 0}
CELL = {"sampler": "ddim", "spacing": "uniform", "budget": 10, "nfe": 10, "fid": 20.0}


@pytest.mark.parametrize(
    ("saved", "now", "kept"),
    [
        ({**IDENTITY, "precision": "fp32"}, {**IDENTITY, "precision": "fp32"}, True),
        ({**IDENTITY, "precision": "fp32"}, {**IDENTITY, "precision": "bf16"}, False),
        (IDENTITY, {**IDENTITY, "precision": "fp32"}, True),  # written before precision was recorded
        (IDENTITY, {**IDENTITY, "precision": "bf16"}, False),
        ({**IDENTITY, "precision": "fp32"}, {**IDENTITY, "precision": "fp32", "n": 200}, False),
        ({**IDENTITY, "precision": "fp32"}, {**IDENTITY, "precision": "fp32", "fingerprint": "x"}, False),
    ],
)
def test_mnist_keeps_only_cells_of_the_same_identity(saved, now, kept):
    assert set(now) == set(MNIST_IDENTITY)
    saved = {**saved, "cells": [CELL]}
    if kept:
        assert _kept_cells(saved, now, overwrite=False) == {("ddim", "uniform", 10): CELL}
    else:
        with pytest.raises(ValueError, match="holds results for another"):
            _kept_cells(saved, now, overwrite=False)
        assert _kept_cells(saved, now, overwrite=True) == {}
    assert _kept_cells(None, now, overwrite=False) == {}
