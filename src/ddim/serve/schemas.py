"""The JSON requests of the API, built for one server's model and limits so its OpenAPI schema
states them. Values the library judges (η for a sampler, classes, guidance) are checked by the
library's own functions, so the API refuses exactly what `ddim.sample` would."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from ddim import samplers
from ddim.guidance import MAX_GUIDANCE, check_guidance, conditioning
from ddim.models import Model
from ddim.schedule import Spacing
from ddim.serve.limits import Limits

MAX_SEED = 2**32 - 1  # JavaScript numbers hold it exactly
DEFAULT_N = 4  # images a sample request draws unless it says
_NULL = {"type": "null"}
_GUIDANCE = f"classifier-free guidance weight w in [0, {MAX_GUIDANCE:g}], with classes (default 1)"
Guidance = Annotated[float, AfterValidator(check_guidance)]


def _whole(value: Any) -> Any:
    """2.0 as 2: JSON (and its schemas' "integer") has one kind of number; "3" and true stay refused."""
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


# the rules between fields, in the schema too (JSON Schema's if/then, OpenAPI 3.1)
_GIVEN = {"not": {"type": "null"}}
_ETA_ONLY_FOR_FREE_ETA = {  # another sampler fixes η (check_eta): a number is for those that take any
    "if": {"required": ["eta"], "properties": {"eta": _GIVEN}},
    "then": {"properties": {"sampler": {"enum": list(samplers.free_eta())}}},
}
_GUIDANCE_NEEDS_CLASSES = {  # guidance weighs a class against the unconditional model
    "if": {"required": ["guidance"], "properties": {"guidance": _GIVEN}},
    "then": {"required": ["classes"], "properties": {"classes": _GIVEN}},
}


@dataclass(frozen=True)
class Requests:
    """The request models of one app."""

    sample: type[BaseModel]
    interpolate: type[BaseModel]


def request_models(model: Model, limits: Limits) -> Requests:
    """Pydantic models for `model` (its classes; steps also ≤ its T) whose bounds are `limits`."""
    max_steps = limits.steps_cap(model.schedule.num_timesteps)
    strict = ConfigDict(extra="forbid", strict=True)  # no "3" for 3, no true for 1
    image_classes, frame_class, guidance_schema = _class_schemas(model, limits.max_n)
    sample_rules = [_ETA_ONLY_FOR_FREE_ETA, _GUIDANCE_NEEDS_CLASSES]
    if model.num_classes is not None:
        sample_rules += _list_lengths(limits.max_n)

    class SampleRequest(BaseModel):
        model_config = ConfigDict(**strict, json_schema_extra={"allOf": sample_rules})
        n: int = Field(DEFAULT_N, ge=1, le=limits.max_n, description="number of images")
        steps: int = Field(20, ge=1, le=max_steps, description="sampling steps S")
        sampler: Literal[samplers.names()] = Field(  # type: ignore[valid-type]
            "ddim", description="; ".join(f"{s.name}: {s.summary}" for s in samplers.registry().values())
        )
        eta: float | None = Field(None, ge=0, le=1, description="η for sampler ddim (default 0)")
        spacing: Spacing = Field("uniform", description="the timestep sub-sequence")
        seed: int = Field(0, ge=0, le=MAX_SEED, description="image i of the grid uses seed (seed, i)")
        nrow: int | None = Field(None, ge=1, le=limits.max_n, description="grid columns (default ≈ √n)")
        guidance: Guidance | None = Field(
            None, description=_GUIDANCE, json_schema_extra=guidance_schema
        )  # before classes
        classes: Any = Field(
            None, validate_default=True,
            description="class-conditional models: one class (index or name) for all images, or a "
            "list of one per image, n long (default: unconditional)",
            json_schema_extra=image_classes,
        )  # fmt: skip

        _whole_numbers = field_validator("n", "steps", "seed", "nrow", mode="before")(_whole)

        @field_validator("eta")
        @classmethod
        def _eta_only_for_ddim(cls, eta: float | None, info: ValidationInfo) -> float | None:
            samplers.check_eta(info.data.get("sampler", "ddim"), eta)
            return eta

        @field_validator("classes")
        @classmethod
        def _the_models_classes(cls, classes: Any, info: ValidationInfo) -> list[int] | None:
            return _labels(model, classes, info.data, info.data.get("n"))

    class InterpolationRequest(BaseModel):
        model_config = ConfigDict(**strict, json_schema_extra={"allOf": [_GUIDANCE_NEEDS_CLASSES]})
        seed_a: int = Field(0, ge=0, le=MAX_SEED, description="the first end: image 0 of this seed")
        seed_b: int = Field(1, ge=0, le=MAX_SEED, description="the other end")
        frames: int = Field(9, ge=2, le=limits.max_frames, description="images along the path, ends included")
        steps: int = Field(20, ge=1, le=max_steps, description="DDIM steps S (η = 0)")
        spacing: Spacing = Field("uniform", description="the timestep sub-sequence")
        guidance: Guidance | None = Field(None, description=_GUIDANCE, json_schema_extra=guidance_schema)
        classes: Any = Field(
            None, validate_default=True, json_schema_extra=frame_class,
            description="class-conditional models: the class (index or name) every frame is decoded "
            "with (default: unconditional)",
        )  # fmt: skip

        _whole_numbers = field_validator("seed_a", "seed_b", "frames", "steps", mode="before")(_whole)

        @field_validator("classes")
        @classmethod
        def _the_models_class(cls, classes: Any, info: ValidationInfo) -> list[int] | None:
            return _labels(model, classes, info.data, 1)

    return Requests(SampleRequest, InterpolationRequest)


def _class_schemas(model: Model, max_n: int) -> tuple[dict, dict, dict]:
    """JSON schemas of `classes` for sampling and for interpolation, and the part of guidance's,
    that allow exactly what the model takes: for an unconditional model, null only; else an
    index 0 … K − 1, a class name or its decimal index as a string, or (sampling) a list of them."""
    k = model.num_classes
    if k is None:
        return {"anyOf": [_NULL]}, {"anyOf": [_NULL]}, {"anyOf": [_NULL]}
    one = [
        {"type": "integer", "minimum": 0, "maximum": k - 1},
        {"type": "string", "enum": sorted({*model.class_names, *map(str, range(k))})},
    ]
    many = {"type": "array", "items": {"anyOf": one}, "minItems": 1, "maxItems": max_n}
    weight = {"type": "number", "minimum": 0, "maximum": MAX_GUIDANCE}
    return {"anyOf": [*one, many, _NULL]}, {"anyOf": [*one, _NULL]}, {"anyOf": [weight, _NULL]}


def _list_lengths(max_n: int) -> list[dict]:
    """Schema rules: a list of classes has one class for all n images, or one per image."""

    def lengths(n: int) -> dict:
        one_or_n = [{"type": "array", "minItems": k, "maxItems": k} for k in sorted({1, n})]
        return {"properties": {"classes": {"anyOf": [{"not": {"type": "array"}}, *one_or_n]}}}

    given = [{"if": {"required": ["n"], "properties": {"n": {"const": n}}}, "then": lengths(n)}
             for n in range(1, max_n + 1)]  # fmt: skip
    return [*given, {"if": {"not": {"required": ["n"]}}, "then": lengths(DEFAULT_N)}]


def _labels(model: Model, classes: Any, data: dict[str, Any], n: int | None) -> list[int] | None:
    """`classes` as one label per image (one for all if n = 1), or None: unconditional. Checked
    with the request's guidance by `ddim.guidance.conditioning`, unless n or the guidance is
    itself invalid (that error is reported instead)."""
    if n is None or "guidance" not in data:
        return None
    labels, _ = conditioning(model, _whole(classes), data["guidance"], n)
    return None if labels is None else labels.tolist()
