"""`-n` and `n` are bounded (issue 24, item 4): an absurd count is one line, not an OverflowError
or a process that grows until the kernel kills it."""

from __future__ import annotations

import pytest
import torch

import ddim
from ddim.sampling import MAX_SAMPLES
from helpers import run_cli


@pytest.mark.parametrize("n", [10**20, 10**12, MAX_SAMPLES + 1])
@pytest.mark.parametrize("where", [["--out", "x.png"], ["--out-dir", "d"]])
def test_an_absurd_n_is_one_line_and_creates_nothing(tmp_path, capsys, monkeypatch, n, where):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "sample", "--model", "toy", "-n", n, *where, "--quiet")
    assert code == 2
    assert f"in [1, {MAX_SAMPLES}]" in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_the_library_refuses_n_past_the_bound():
    with pytest.raises(ValueError, match="n must be at most"):
        ddim.sample(lambda x, t: torch.zeros_like(x), n=MAX_SAMPLES + 1, shape=(1, 2, 2),
                    schedule=ddim.NoiseSchedule.linear(10), steps=2)  # fmt: skip
