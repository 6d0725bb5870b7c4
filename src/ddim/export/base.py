"""What every exporter checks first: the network is our DDPM U-Net."""

from __future__ import annotations

from ddim.models import Model
from ddim.models.unet import UNet, UNetConfig


class ExportError(ValueError):
    """A model the target format cannot express; the message names what is missing."""


def require_unet(model: Model, target: str) -> UNetConfig:
    """The U-Net config of `model`, or an ExportError: `target` holds only the DDPM U-Net."""
    if not isinstance(model.net, UNet):
        config = getattr(model.net, "config", None)
        kind = config.to_dict().get("type") if hasattr(config, "to_dict") else type(model.net).__name__
        raise ExportError(f"{target} export needs the DDPM U-Net; this model's network is {kind!r}")
    return model.net.config
