"""Helpers for tests/serve: small limits and slow models (real servers: `benchmarks.browser`)."""

import time

import torch
from torch import nn

from ddim.models import Model
from ddim.serve import Limits

LIMITS = Limits(
    max_n=8, max_steps=30, max_frames=5, max_upload_bytes=4096, max_upload_pixels=64 * 64, max_queue=2
)


class SlowNet(nn.Module):
    """A net that takes `seconds` per call: jobs long enough to cancel or to fill the queue."""

    def __init__(self, net: nn.Module, seconds: float):
        super().__init__()
        self.net, self.seconds = net, seconds

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.net(x, t)


def slow_model(model: Model, seconds: float) -> Model:
    return Model(SlowNet(model.net, seconds), model.schedule, model.image_shape, model.prediction)
