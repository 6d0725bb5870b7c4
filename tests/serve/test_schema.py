"""A property-based run over the OpenAPI schema (schemathesis): no input makes a 5xx."""

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

import ddim
from ddim.serve import Limits, create_app
from ddim.toy import toy_model

LIMITS = Limits(max_n=4, max_steps=10, max_frames=3, max_upload_bytes=4096, max_upload_pixels=64 * 64)
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def api_schema(model: ddim.Model):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(model, LIMITS))


schema = api_schema(ddim.load("toy"))
conditional = api_schema(toy_model(conditional=True)).include(path_regex="^/api/(sample|interpolate)$")


@schema.parametrize()
@SETTINGS
def test_no_input_makes_a_server_error(case):
    case.call_and_validate(checks=[not_a_server_error])


@conditional.parametrize()
@SETTINGS
def test_no_class_or_guidance_makes_a_server_error(case):
    case.call_and_validate(checks=[not_a_server_error])
