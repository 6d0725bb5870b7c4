"""Samples are bit-identical to the committed golden hashes (`tests/golden.py`): every sampler ×
spacing × η, clipping, explicit timesteps, guidance, inversion, interpolation and editing, on
the toy oracle and the shipped models. They were computed before the sampling shell was
refactored (issue 23); a change to any of them is a change of what the library computes."""

import json

import pytest
import torch

from golden import GOLDEN, cases, digest, platform

RECORDED = json.loads(GOLDEN.read_text())
CASES = cases()


@pytest.fixture(autouse=True)
def one_thread():
    """The hashes were taken on one thread: convolutions round differently on more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_recorded_case_is_still_computed():
    assert sorted(CASES) == sorted(RECORDED["hashes"])


@pytest.mark.skipif(
    platform() != RECORDED["platform"],
    reason=f"hashes recorded on {RECORDED['platform']}, this is {platform()}: rounding differs",
)
@pytest.mark.parametrize("case", sorted(CASES))
def test_samples_match_the_golden_hash(case):
    assert digest(CASES[case]()) == RECORDED["hashes"][case]
