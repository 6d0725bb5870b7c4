"""A property-based run over the OpenAPI schema (schemathesis), with a fixed seed: no input makes
a 5xx, every answer is one the schema documents (status, content type, body), and every request
the schema allows is accepted (but an upload: whether bytes are an image no schema can say)."""

import pytest
import schemathesis
from hypothesis import HealthCheck, seed, settings
from schemathesis.checks import positive_data_acceptance

import ddim
from ddim.serve import Limits, create_app
from ddim.toy import toy_model

LIMITS = Limits(max_n=4, max_steps=10, max_frames=3, max_upload_bytes=4096, max_upload_pixels=64 * 64)
SEED = 24
CI, SLOW = 30, 220  # examples per operation: 5 operations × 2 models × 220 = 2,200 requests when slow


def api_schema(model: ddim.Model):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(model, LIMITS))


MODELS = {"toy": api_schema(ddim.load("toy")), "toy-cond": api_schema(toy_model(conditional=True))}


def check(case) -> None:
    excluded = [positive_data_acceptance] if case.path == "/api/invert" else []
    case.call_and_validate(excluded_checks=excluded)


def bounded(examples: int):
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )


@MODELS["toy"].parametrize()
@bounded(CI)
@seed(SEED)
def test_the_unconditional_model_answers_as_its_schema_says(case):
    check(case)


@MODELS["toy-cond"].parametrize()
@bounded(CI)
@seed(SEED)
def test_the_conditional_model_answers_as_its_schema_says(case):
    check(case)


@pytest.mark.slow
@MODELS["toy"].parametrize()
@bounded(SLOW)
@seed(SEED)
def test_many_requests_to_the_unconditional_model(case):
    check(case)


@pytest.mark.slow
@MODELS["toy-cond"].parametrize()
@bounded(SLOW)
@seed(SEED)
def test_many_requests_to_the_conditional_model(case):
    check(case)
