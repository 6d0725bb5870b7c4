"""Reproducible random streams: one CPU generator per tuple of integer keys."""

from __future__ import annotations

import numpy as np
import torch


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU `torch.Generator` determined by `keys` (e.g. (seed, sample index, stream)).

    Keys are mixed with numpy's SeedSequence, so neighbouring tuples give independent streams;
    draws happen on the CPU, so results do not depend on the device.
    """
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
