"""The API in process: images equal to the library's, determinism, and a 4xx for every bad input."""

import base64
import io
import json
import threading

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import ddim
from ddim.guidance import MAX_GUIDANCE
from ddim.io import make_grid, to_uint8
from ddim.serve import Limits, create_app
from ddim.toy import GLYPH_NAMES, toy_model
from serving import LIMITS


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return np.asarray(im)


def parse_event(block: str) -> tuple[str, dict]:
    event, data = block.split("\n")
    return event.removeprefix("event: "), json.loads(data.removeprefix("data: "))


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def png_of(x: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(x)[0, :, :, 0]).save(buffer, format="PNG")
    return buffer.getvalue()


def grid_of(x: torch.Tensor, nrow: int | None = None) -> np.ndarray:
    """The grid the server should send for images x, made here by ddim.io (not the server's code)."""
    return make_grid(to_uint8(x), nrow, pad=0 if len(x) == 1 else 2)[..., 0]


@pytest.mark.parametrize(("n", "nrow", "size"), [(5, None, (32, 22)), (3, 3, (32, 12)), (1, None, (8, 8))])
def test_sample_answers_a_png_grid_of_n_images_equal_to_the_library(client, tiny_checkpoint, n, nrow, size):
    body = {"n": n, "steps": 6, "eta": 0.5, "seed": 3, "nrow": nrow}
    r = client.post("/api/sample", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-steps"] == "6"
    grid = png_array(r.content)
    assert grid.shape[::-1] == size  # (W, H): 8-px tiles, 2 px apart and around when n > 1
    x = ddim.sample(ddim.load(tiny_checkpoint), n, steps=6, eta=0.5, seed=3)
    assert np.array_equal(grid, grid_of(x, nrow))


def test_identical_deterministic_requests_give_identical_bytes(client):
    body = {"n": 4, "steps": 5, "eta": 0.0, "seed": 7, "spacing": "quadratic"}
    first, again = (client.post("/api/sample", json=body).content for _ in range(2))
    assert first == again
    assert client.post("/api/sample", json={**body, "seed": 8}).content != first


def test_the_stream_sends_previews_then_the_same_images(client):
    body = {"n": 2, "steps": 25, "seed": 1}
    with client.stream("POST", "/api/sample/stream", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [parse_event(block) for block in r.read().decode().strip().split("\n\n")]
    names = [name for name, _ in events]
    assert names[0] == "queued"
    assert names[-1] == "done"
    steps = [data["step"] for name, data in events if name == "step"]
    assert steps == list(range(2, 25, 2))  # every ⌈25 / 20⌉ = 2 steps, the last one is "done"
    for _, data in events[1:-1]:
        for key in ("x0", "xt"):
            assert png_array(base64.b64decode(data[key].removeprefix("data:image/png;base64,"))).shape == (
                12,
                22,
            )
    done = events[-1][1]
    assert (done["n"], done["steps"]) == (2, 25)
    assert done["image"] == data_url(client.post("/api/sample", json=body).content)


@pytest.mark.parametrize("sampler", ["dpm-solver++", "unipc", "plms"])
@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
def test_the_solvers_and_logsnr_spacing_give_the_librarys_images(client, tiny_checkpoint, sampler, spacing):
    body = {"n": 3, "steps": 7, "sampler": sampler, "spacing": spacing, "seed": 5}
    r = client.post("/api/sample", json=body)
    assert r.status_code == 200, r.text
    x = ddim.sample(ddim.load(tiny_checkpoint), **body)
    assert np.array_equal(png_array(r.content), grid_of(x))


def test_model_info_lists_the_samplers_spacings_and_classes(client, conditional_client):
    info = client.get("/api/model").json()
    assert info["samplers"] == [
        "ddim",
        "ddpm",
        "ddpm-large",
        "dpm-solver++",
        "dpm-solver++3m",
        "unipc",
        "plms",
    ]
    assert info["fixed_eta"] == {
        "ddim": None, "ddpm": "1", "ddpm-large": "σ̂", "dpm-solver++": "0", "dpm-solver++3m": "0",
        "unipc": "0", "plms": "0",
    }  # fmt: skip
    assert info["spacings"] == ["uniform", "quadratic", "trailing", "linspace", "logsnr"]
    assert (info["num_classes"], info["class_names"]) == (None, [])
    info = conditional_client.get("/api/model").json()
    assert (info["num_classes"], info["class_names"]) == (8, list(GLYPH_NAMES))
    assert info["limits"]["max_guidance"] == MAX_GUIDANCE


@pytest.mark.parametrize(
    ("classes", "guidance"),
    [(3, None), (3, 1), ("plus", 1), (5, 2.5), ([0, 7, 3], 0), ([1, 1, 6], 4), (None, None)],
)
def test_a_class_and_guidance_give_the_librarys_images(conditional_client, classes, guidance):
    body = {"n": 3, "steps": 4, "seed": 11, "classes": classes, "guidance": guidance}
    r = conditional_client.post("/api/sample", json=body)
    assert r.status_code == 200, r.text
    x = ddim.sample(toy_model(conditional=True), **body)
    assert np.array_equal(png_array(r.content), grid_of(x))


def test_the_stream_samples_the_class_too(conditional_client):
    body = {"n": 2, "steps": 4, "seed": 1, "classes": "ring", "guidance": 3}
    with conditional_client.stream("POST", "/api/sample/stream", json=body) as r:
        name, done = parse_event(r.read().decode().strip().split("\n\n")[-1])
    assert name == "done"
    assert done["image"] == data_url(conditional_client.post("/api/sample", json=body).content)
    unguided = conditional_client.post("/api/sample", json={**body, "guidance": 0}).content
    assert done["image"] != data_url(unguided)


def test_interpolation_decodes_every_frame_with_the_class(conditional_client):
    body = {"seed_a": 2, "seed_b": 5, "frames": 3, "steps": 4, "classes": "diamond", "guidance": 2}
    r = conditional_client.post("/api/interpolate", json=body)
    assert r.status_code == 200, r.text
    frames = r.json()["frames"]
    model = toy_model(conditional=True)
    for seed, frame in ((2, frames[0]), (5, frames[-1])):
        x = ddim.sample(model, 1, steps=4, eta=0.0, seed=seed, classes="diamond", guidance=2)
        assert frame == data_url(png_of(x))


BAD_CONDITIONING = [
    ({"classes": 8}, "classes"),
    ({"classes": "nine"}, "classes"),
    ({"classes": True}, "classes"),
    ({"classes": 1.5}, "classes"),
    ({"classes": [1, 2]}, "classes"),  # n = 3: one class, or three
    ({"classes": [[1], [2], [3]]}, "classes"),
    ({"guidance": 2.0}, "classes"),  # nothing to guide towards
    ({"classes": 1, "guidance": 25.5}, "guidance"),
    ({"classes": 1, "guidance": -0.5}, "guidance"),
]


def library_refusal(model, **options) -> str:
    """What `ddim.sample` says to these options (it refuses them before sampling)."""
    with pytest.raises(ValueError, match=r".+") as refused:
        ddim.sample(model, 3, steps=1, **options)
    return str(refused.value)


@pytest.mark.parametrize(("body", "field"), BAD_CONDITIONING)
@pytest.mark.parametrize("route", ["/api/sample", "/api/sample/stream"])
def test_bad_classes_and_guidance_get_the_librarys_message(conditional_client, route, body, field):
    r = conditional_client.post(route, json={"n": 3, **body})
    assert r.status_code == 422
    assert r.json()["message"] == f"{field}: {library_refusal(toy_model(conditional=True), **body)}"


@pytest.mark.parametrize("body", [{"classes": 0}, {"classes": "ring", "guidance": 2.0}, {"guidance": 2.0}])
def test_an_unconditional_model_refuses_classes_and_guidance(client, tiny_model, body):
    r = client.post("/api/sample", json={"n": 3, **body})
    assert r.status_code == 422
    assert r.json()["message"] == f"classes: {library_refusal(tiny_model, **body)}"


def test_interpolation_takes_one_class(conditional_client):
    r = conditional_client.post("/api/interpolate", json={"classes": [1, 2]})
    assert r.status_code == 422
    assert r.json()["message"].startswith("classes: give one class for all 1 samples")


BAD_SAMPLES = [
    ({"n": 0}, "n"),
    ({"n": LIMITS.max_n + 1}, "n"),
    ({"n": 2.5}, "n"),
    ({"steps": 0}, "steps"),
    ({"steps": LIMITS.max_steps + 1}, "steps"),
    ({"eta": -0.1}, "eta"),
    ({"eta": 1.5}, "eta"),
    ({"eta": "a lot"}, "eta"),
    ({"sampler": "ddpm", "eta": 0.5}, "eta"),
    ({"sampler": "plms", "eta": 0.5}, "eta"),
    ({"classes": 0}, "classes"),  # the tiny model is unconditional
    ({"guidance": 1.0}, "classes"),
    ({"sampler": "euler"}, "sampler"),
    ({"spacing": "cubic"}, "spacing"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**40}, "seed"),
    ({"nrow": 0}, "nrow"),
    ({"path": "/etc/passwd"}, "path"),
]


@pytest.mark.parametrize(("body", "field"), BAD_SAMPLES)
@pytest.mark.parametrize("route", ["/api/sample", "/api/sample/stream"])
def test_bad_sample_requests_get_422_naming_the_field(client, route, body, field):
    r = client.post(route, json=body)
    assert r.status_code == 422
    assert r.json()["message"].startswith(f"{field}: ")
    assert client.get("/api/status").json()["completed"] == 0  # refused before any work


def test_steps_are_capped_by_the_models_timesteps(tiny_model):
    with TestClient(create_app(tiny_model, Limits(max_steps=500))) as c:  # T = 100
        assert c.get("/api/model").json()["limits"]["max_steps"] == 100
        assert c.post("/api/sample", json={"steps": 101}).status_code == 422
        assert c.post("/api/sample", json={"steps": 100, "n": 1}).status_code == 200


@pytest.mark.parametrize(
    ("raw", "start"),
    [(b"{n: 3", "body: JSON decode error"), (b"[1, 2]", "body: "), (b'{"eta": NaN}', "eta: "),
     (b'{"n": true}', "n: "), (b'{"n": "3"}', "n: ")],
)  # fmt: skip
def test_bodies_that_are_not_the_schemas_json_get_422(client, raw, start):
    r = client.post("/api/sample", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["message"].startswith(start)


@pytest.mark.parametrize(
    ("body", "field"), [({"frames": 1}, "frames"), ({"frames": LIMITS.max_frames + 1}, "frames"),
                        ({"seed_a": -2}, "seed_a"), ({"steps": 0}, "steps")],
)  # fmt: skip
def test_bad_interpolation_requests_get_422(client, body, field):
    r = client.post("/api/interpolate", json=body)
    assert r.status_code == 422
    assert r.json()["message"].startswith(f"{field}: ")


def test_a_full_queue_answers_429_with_retry_after(tiny_model):
    release = threading.Event()
    with TestClient(create_app(tiny_model, Limits(max_queue=1))) as c:
        jobs = c.app.state.jobs
        blockers = [jobs.submit(lambda cancel: release.wait(30)) for _ in range(2)]  # running + waiting
        try:
            for route in ("/api/sample", "/api/sample/stream"):
                r = c.post(route, json={})
                assert r.status_code == 429, route
                assert int(r.headers["retry-after"]) >= 1
        finally:
            release.set()
        for b in blockers:
            b.future.result(timeout=30)
        assert c.post("/api/sample", json={"n": 1, "steps": 2}).status_code == 200
        assert c.get("/api/status").json()["rejected"] == 2


def test_interpolation_ends_are_the_seeds_deterministic_samples(client, tiny_checkpoint):
    r = client.post("/api/interpolate", json={"seed_a": 4, "seed_b": 9, "frames": 4, "steps": 5})
    assert r.status_code == 200, r.text
    frames = r.json()["frames"]
    assert len(frames) == 4
    model = ddim.load(tiny_checkpoint)
    for seed, frame in ((4, frames[0]), (9, frames[-1])):
        x = ddim.sample(model, 1, steps=5, eta=0.0, seed=seed)
        assert frame == data_url(png_of(x))


def test_invert_reconstructs_an_upload_and_reports_its_mse(client, tiny_checkpoint):
    x0 = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    r = client.post("/api/invert?steps=10", content=png_of(x0))
    assert r.status_code == 200, r.text
    data = r.json()
    model = ddim.load(tiny_checkpoint)
    seen = torch.from_numpy(png_array(png_of(x0)).astype(np.float32))[None, None] / 127.5 - 1
    expected = ddim.sample(model, noise=ddim.invert(model, seen, steps=10), steps=10, eta=0.0)
    assert data["mse"] == pytest.approx((expected - seen).pow(2).mean().item(), rel=1e-5)
    assert data["input"] == data_url(png_of(seen))


def big_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("query", "body", "status", "start"),
    [
        ("", b"", 422, "body: empty upload"),
        ("", b"not an image at all", 422, "body: not an image"),
        ("", b"--boundary\r\nContent-Disposition: form-data", 422, "body: not an image"),
        ("", big_png(8)[:40], 422, "body: "),  # truncated
        ("", big_png(65), 422, "body: the image is 65×65 pixels; the server takes images of at most 4,096"),
        ("", b"\0" * (LIMITS.max_upload_bytes + 1), 413, "the file is too large: "),
        ("?steps=0", big_png(8), 422, "steps: "),
        ("?steps=31", big_png(8), 422, "steps: "),
        ("?spacing=cubic", big_png(8), 422, "spacing: "),
    ],
)
def test_bad_uploads_get_their_4xx(client, query, body, status, start):
    r = client.post(f"/api/invert{query}", content=body)
    assert r.status_code == status
    assert r.json()["message"].startswith(start)
    assert ("not a form" in r.json()["message"]) == body.startswith(b"--")  # a multipart upload is told


def test_an_upload_without_a_length_is_cut_off_at_the_limit(client):
    chunks = (b"\0" * 1024 for _ in range(8))  # chunked transfer: no Content-Length to trust
    r = client.post("/api/invert", content=chunks)
    assert r.status_code == 413
    assert r.json()["message"] == "the file is too large: the server takes uploads of at most 4 KiB"


def test_the_page_and_no_file_beyond_it(client, tiny_checkpoint):
    page = client.get("/")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'id="sample-button"' in page.text
    assert client.get("/app.js").headers["content-type"].startswith("text/javascript")
    for path in ("/static/app.js", "/index.html", "/%2e%2e/pyproject.toml", "/docs"):
        assert client.get(path).status_code == 404, path
    info = client.get("/api/model").json()
    assert info["name"] == tiny_checkpoint.name  # the file's name, not where it lies
    assert info["image_shape"] == [1, 8, 8]


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_n must be an integer >= 1, got 0"):
        Limits(max_n=0)
    with pytest.raises(ValueError, match="max_frames"):
        Limits(max_frames=1)
