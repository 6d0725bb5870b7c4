"""A loaded diffusion model: a network plus everything needed to sample it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import nn

from ddim.models.parameterization import Prediction, check_prediction
from ddim.schedule import NoiseSchedule


@dataclass(frozen=True, eq=False)
class Model:
    """A network `net(x_t, t)`, its noise schedule, the shape of one sample and what it predicts.

    `net.config.to_dict()` must describe the network (the checkpoint stores it); `info` holds
    free-form provenance (training settings, source file), saved as-is. A class-conditional
    network (`net.config.num_classes` set) is called `net(x_t, t, y)`, y = num_classes being
    the null class; `class_names` optionally names its classes, one name each.
    """

    net: nn.Module
    schedule: NoiseSchedule
    image_shape: tuple[int, int, int]  # (C, H, W)
    prediction: Prediction = "eps"
    info: dict = field(default_factory=dict)
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        shape = tuple(self.image_shape)
        if len(shape) != 3 or any(not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"image_shape must be (C, H, W) positive integers, got {self.image_shape}")
        object.__setattr__(self, "image_shape", shape)
        check_prediction(self.prediction)
        names = tuple(self.class_names)
        object.__setattr__(self, "class_names", names)
        if any(not isinstance(name, str) or not name for name in names):
            raise ValueError(f"class names must be non-empty strings, got {list(names)}")
        if names and (len(names) != (self.num_classes or 0) or len(set(names)) != len(names)):
            raise ValueError(
                f"class_names must be {self.num_classes or 0} distinct names (one per class of the "
                f"network), got {list(names)}"
            )

    @property
    def num_classes(self) -> int | None:
        """The number of classes of a class-conditional network; None if it is unconditional."""
        return num_classes(self.net)

    @property
    def default_timesteps(self) -> tuple[int, ...] | None:
        """The timesteps a distilled model was trained to sample with (DDIM, η = 0), descending:
        `info["distilled"]["timesteps"]` (`ddim.distillation` writes it); None for other models."""
        distilled = self.info.get("distilled")
        if distilled is None:
            return None
        ts = distilled.get("timesteps") if isinstance(distilled, dict) else None
        if not isinstance(ts, list | tuple) or not ts or not all(type(t) is int for t in ts):
            raise ValueError(
                f"the model's info['distilled']['timesteps'] must be a list of integers, got {ts!r}"
            )
        return tuple(ts)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def fingerprint(self) -> str:
        """sha1 of the network's weights and the schedule: identifies the model a result is of."""
        digest = hashlib.sha1(self.schedule.betas.cpu().numpy().tobytes())
        for name, tensor in sorted(self.net.state_dict().items()):
            digest.update(name.encode())
            raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # any dtype, even bf16
            digest.update(raw.numpy().tobytes())
        return digest.hexdigest()


def num_classes(net: object) -> int | None:
    """`net.config.num_classes`: how many classes a conditional network has (None: unconditional)."""
    return getattr(getattr(net, "config", None), "num_classes", None)
