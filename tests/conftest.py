"""Shared fixtures: tiny models that build in milliseconds."""

import pytest
import torch

import ddim
from ddim.metrics import Extractor
from ddim.models import Model
from ddim.models.unet import UNet, UNetConfig

TINY_UNET = UNetConfig(
    resolution=8, in_channels=1, out_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1,
    attn_resolutions=(4,), dropout=0.0, norm_groups=4,
)  # fmt: skip


def tiny_unet_model(seed: int = 0, num_timesteps: int = 100, **overrides) -> Model:
    """A randomly initialised 8×8 grayscale U-Net with a short linear schedule."""
    torch.manual_seed(seed)
    config = UNetConfig(**{**TINY_UNET.__dict__, **overrides})
    net = UNet(config).eval()
    schedule = ddim.NoiseSchedule.linear(num_timesteps, 1e-4, 0.2)
    return Model(net, schedule, (config.in_channels, config.resolution, config.resolution), "eps")


@pytest.fixture
def make_tiny_model():
    return tiny_unet_model


@pytest.fixture
def tiny_model() -> Model:
    return tiny_unet_model()


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_model):
    return ddim.save(tiny_model, tmp_path / "tiny.safetensors")


def tiny_features(name: str = "tiny") -> Extractor:
    """A cheap stand-in for a feature network: 4×4 average-pooled pixels of channel 0 (16-d)."""
    net = torch.nn.AdaptiveAvgPool2d(4)
    return Extractor(
        name,
        16,
        f"{name}-v1",
        net,
        lambda u: u[:, :1] / 255.0,
        lambda x: net(x).flatten(1),
        torch.device("cpu"),
    )


@pytest.fixture
def tiny_extractor() -> Extractor:
    return tiny_features()


@pytest.fixture
def make_extractor():
    return tiny_features


@pytest.fixture
def graphs(monkeypatch):
    """Make torch.compile use a backend that records each graph it is given; returns the list."""
    compiled = []

    def backend(gm, example_inputs):
        compiled.append(gm)
        return gm.forward

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda net, **kw: real(net, **{**kw, "backend": backend}))
    torch._dynamo.reset()
    yield compiled
    torch._dynamo.reset()
