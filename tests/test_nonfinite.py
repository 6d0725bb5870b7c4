"""Non-finite values are refused, never returned: inputs on entry, and the first step where the
network's output or the state turned NaN or inf named after the loop (issue 24, item 1)."""

from __future__ import annotations

import pytest
import torch

import ddim
from conftest import tiny_unet_model
from helpers import run_cli


def _eps_turning_bad_at(t_bad: int, value: float):
    def eps(x, t):
        out = torch.zeros_like(x)
        return out.fill_(value) if int(t[0]) == t_bad else out

    return eps


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_callable_that_returns_nan_or_inf_is_named_at_its_first_step(value):
    schedule = ddim.NoiseSchedule.linear(1000)
    ts = ddim.timesteps(1000, steps=10, spacing="trailing").tolist()
    eps = _eps_turning_bad_at(ts[2], value)
    with pytest.raises(ValueError, match=rf"network's output at step 3 of 10 \(t = {ts[2]}\)"):
        ddim.sample(eps, shape=(1, 4, 4), n=2, schedule=schedule, steps=10, spacing="trailing", seed=0)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_noise_with_nan_or_inf_is_refused(value):
    noise = torch.zeros(2, 1, 4, 4)
    noise[1, 0, 2, 2] = value
    with pytest.raises(ValueError, match="starting x holds NaN or inf"):
        ddim.sample(lambda x, t: torch.zeros_like(x), noise=noise, schedule=ddim.NoiseSchedule.linear(100))


def test_finite_runs_are_unchanged_by_the_check():
    schedule = ddim.NoiseSchedule.linear(100)
    eps = _eps_turning_bad_at(-5, 0.0)  # never bad
    x = ddim.sample(eps, shape=(1, 4, 4), n=3, schedule=schedule, steps=5, seed=1, eta=1.0)
    assert torch.isfinite(x).all()


def test_huge_finite_weights_fail_in_one_line_and_write_nothing(tmp_path, capsys):
    """The issue's checkpoint: every weight 3e38, finite, samples to NaN; `ddim sample` said
    nothing and wrote a black PNG."""
    model = tiny_unet_model()
    with torch.no_grad():
        for p in model.net.parameters():
            p.fill_(3e38)
    path = ddim.save(model, tmp_path / "huge.safetensors")
    out = tmp_path / "samples.png"
    code, _, err = run_cli(capsys, "sample", "--model", path, "-n", 2, "--steps", 5, "--out", out, "--quiet")
    assert code == 2
    assert "NaN or inf" in err
    assert "step 1 of 5" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
