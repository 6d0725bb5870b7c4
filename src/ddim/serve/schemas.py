"""The JSON requests of the API, built for one server's limits so its OpenAPI schema states them."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ddim.sampling import Sampler, check_eta
from ddim.schedule import Spacing
from ddim.serve.limits import Limits

MAX_SEED = 2**32 - 1  # JavaScript numbers hold it exactly


@dataclass(frozen=True)
class Requests:
    """The request models of one app."""

    sample: type[BaseModel]
    interpolate: type[BaseModel]


def request_models(limits: Limits, num_timesteps: int) -> Requests:
    """Pydantic models whose bounds are `limits` (steps also ≤ the model's T)."""
    max_steps = limits.steps_cap(num_timesteps)
    strict = ConfigDict(extra="forbid", strict=True)  # no "3" for 3, no true for 1

    class SampleRequest(BaseModel):
        model_config = strict
        n: int = Field(4, ge=1, le=limits.max_n, description="number of images")
        steps: int = Field(20, ge=1, le=max_steps, description="sampling steps S")
        sampler: Sampler = Field(
            "ddim", description="ddim (any η), ddpm (η = 1), ddpm-large (σ̂), dpm-solver++ or plms (η = 0)"
        )
        eta: float | None = Field(None, ge=0, le=1, description="η for sampler ddim (default 0)")
        spacing: Spacing = Field("uniform", description="the timestep sub-sequence")
        seed: int = Field(0, ge=0, le=MAX_SEED, description="image i of the grid uses seed (seed, i)")
        nrow: int | None = Field(None, ge=1, le=limits.max_n, description="grid columns (default ≈ √n)")

        @field_validator("eta")
        @classmethod
        def _eta_only_for_ddim(cls, eta: float | None, info: ValidationInfo) -> float | None:
            check_eta(info.data.get("sampler", "ddim"), eta)
            return eta

    class InterpolationRequest(BaseModel):
        model_config = strict
        seed_a: int = Field(0, ge=0, le=MAX_SEED, description="the first end: image 0 of this seed")
        seed_b: int = Field(1, ge=0, le=MAX_SEED, description="the other end")
        frames: int = Field(9, ge=2, le=limits.max_frames, description="images along the path, ends included")
        steps: int = Field(20, ge=1, le=max_steps, description="DDIM steps S (η = 0)")
        spacing: Spacing = Field("uniform", description="the timestep sub-sequence")

    return Requests(SampleRequest, InterpolationRequest)
