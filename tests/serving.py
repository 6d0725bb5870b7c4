"""Helpers for tests/serve: small limits, slow models, and real uvicorn servers on 127.0.0.1."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import uvicorn
from torch import nn

from ddim.models import Model
from ddim.serve import Limits
from ddim.serve.work import missing_api

LIMITS = Limits(
    max_n=8, max_steps=30, max_frames=5, max_upload_bytes=4096, max_upload_pixels=64 * 64, max_queue=2
)
needs_issue4 = pytest.mark.skipif(
    bool(missing_api("invert", "slerp", "seeded_latents")),
    reason="interpolation and inversion need ddim.invert, ddim.slerp and ddim.seeded_latents (issue 4)",
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


@contextmanager
def live_server(app) -> Iterator[str]:
    """Run `app` on uvicorn at 127.0.0.1 on a free port, in a thread; yield its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
