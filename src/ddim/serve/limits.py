"""What one request may ask of the server: the bounds `ddim serve` enforces, all configurable."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Limits:
    max_n: int = 64  # images per sample request
    max_steps: int = 200  # sampling steps S (also capped by the model's T)
    max_frames: int = 16  # frames per interpolation
    max_upload_bytes: int = 2 * 2**20  # size of an uploaded image file
    max_upload_pixels: int = 4096 * 4096  # its width × height, checked before decoding
    max_queue: int = 4  # jobs waiting behind the running one; more are answered with 429
    max_json_bytes: int = 64 * 2**10  # a JSON request body, refused with 413 before it is parsed

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            low = 0 if name == "max_queue" else 2 if name == "max_frames" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    def steps_cap(self, num_timesteps: int) -> int:
        """The most steps a request may ask of a model with T = `num_timesteps`."""
        return min(self.max_steps, num_timesteps)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)
