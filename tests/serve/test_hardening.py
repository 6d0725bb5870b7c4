"""Issue 24, item 9: the server's published schema and its behaviour agree."""

import pytest
from fastapi.testclient import TestClient

from corpus import bad_dds
from ddim.serve import Limits, create_app
from ddim.toy import toy_model
from serving import LIMITS


def test_a_dds_with_a_bad_pixel_format_is_a_422_in_plain_words(client):
    r = client.post("/api/invert", content=bad_dds())
    assert r.status_code == 422
    assert r.json()["message"].startswith("body: a damaged or cut-short image file")
    assert "Error" not in r.json()["message"]  # no exception names


def test_every_422_has_the_fields_the_schema_requires(client):
    required = client.get("/openapi.json").json()["components"]["schemas"]["ValidationError"]["required"]
    answers = [
        client.post("/api/invert", content=b"not an image"),
        client.post("/api/invert?steps=0", content=b"x"),
        client.post("/api/sample", json={"n": 0}),
        client.post("/api/sample", content=b"\xff\xfe{", headers={"content-type": "application/json"}),
    ]
    for r in answers:
        assert r.status_code == 422
        for error in r.json()["detail"]:
            assert set(required) <= set(error), error


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b"\x80", '{"n": "é"}'.encode("latin-1")])
def test_a_body_that_is_not_utf8_json_is_the_documented_422(client, raw):
    r = client.post("/api/sample", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["message"] in (
        "body: JSON decode error",
        "body: not JSON text (a JSON object in UTF-8 is expected)",
    )
    assert "422" in client.get("/openapi.json").json()["paths"]["/api/sample"]["post"]["responses"]


def test_json_bodies_past_the_limit_get_413_before_parsing(tiny_model):
    with TestClient(create_app(tiny_model, Limits(max_json_bytes=1000))) as c:
        padded = b'{"n": 1,' + b" " * 1000 + b'"steps": 2}'
        for body in (padded, (padded[i : i + 100] for i in range(0, len(padded), 100))):  # chunked too
            r = c.post("/api/sample", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 413
            assert r.json()["message"] == "the JSON body is too large: at most 1000 bytes"
        assert c.post("/api/sample", json={"n": 1, "steps": 2}).status_code == 200
        assert c.get("/api/model").json()["limits"]["max_json_bytes"] == 1000


def _schema(client, name):
    return client.get("/openapi.json").json()["components"]["schemas"][name]["properties"]


def test_the_schema_allows_classes_and_guidance_only_where_the_model_takes_them(client):
    for name in ("SampleRequest", "InterpolationRequest"):
        for field in ("classes", "guidance"):
            assert _schema(client, name)[field]["anyOf"] == [{"type": "null"}]
    assert (
        client.post("/api/sample", json={"classes": None, "guidance": None, "n": 1, "steps": 2}).status_code
        == 200
    )


def test_the_schema_lists_a_conditional_models_classes(conditional_client):
    model = toy_model(conditional=True)
    one, names, many, null = _schema(conditional_client, "SampleRequest")["classes"]["anyOf"]
    assert one == {"type": "integer", "minimum": 0, "maximum": model.num_classes - 1}
    assert set(names["enum"]) == {*model.class_names, *map(str, range(model.num_classes))}
    assert "" not in names["enum"]  # `classes: ""` is not allowed by the schema, as the server refuses it
    assert (many["minItems"], many["maxItems"], null) == (1, LIMITS.max_n, {"type": "null"})
    for classes in [0, model.num_classes - 1, model.class_names[2], "3", [1, 2]]:
        r = conditional_client.post("/api/sample", json={"n": 2, "steps": 1, "classes": classes})
        assert r.status_code == 200, (classes, r.text)


def test_an_empty_upload_is_outside_the_schema(client):
    body = client.get("/openapi.json").json()["paths"]["/api/invert"]["post"]["requestBody"]
    assert body["content"]["application/octet-stream"]["schema"]["minLength"] == 1
