"""A loaded diffusion model: a network plus everything needed to sample it."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ddim.models.parameterization import Prediction, check_prediction
from ddim.schedule import NoiseSchedule


@dataclass(frozen=True, eq=False)
class Model:
    """A network `net(x_t, t)`, its noise schedule, the shape of one sample and what it predicts.

    `net.config.to_dict()` must describe the network (the checkpoint stores it); `info` holds
    free-form provenance (training settings, source file), saved as-is.
    """

    net: nn.Module
    schedule: NoiseSchedule
    image_shape: tuple[int, int, int]  # (C, H, W)
    prediction: Prediction = "eps"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = tuple(self.image_shape)
        if len(shape) != 3 or any(not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"image_shape must be (C, H, W) positive integers, got {self.image_shape}")
        object.__setattr__(self, "image_shape", shape)
        check_prediction(self.prediction)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())
