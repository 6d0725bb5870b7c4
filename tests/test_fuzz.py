"""A bounded in-process fuzz of the image readers (files, training folders, server uploads) and
of the server's upload route: mutated images of every format Pillow writes (tests/corpus.py).
Every exception type that escapes a reader's one-line error is a failure, as is any 5xx.
The default suite runs a few hundred cases; the slow test runs 4,000 (docs/reliability.md)."""

from collections import Counter
from functools import partial

import pytest
from fastapi.testclient import TestClient

import ddim
from corpus import mutated_images
from ddim.data import DataError, load_images
from ddim.serve import Limits, create_app
from ddim.serve.images import BadImage, decode_upload

CI, SLOW = 300, 4000


def fuzz_readers(tmp_path, cases: int, seed: int) -> Counter:
    """Each mutated image read as a file and as an upload; returns what happened, by outcome."""
    outcomes: Counter = Counter()
    escaped = []
    path = tmp_path / "image.png"  # the name says PNG whatever the bytes are
    for name, data in mutated_images(cases, seed):
        path.write_bytes(data)
        readers = (
            (partial(load_images, path, resolution=28, fit="resize", channels=3), DataError),
            (partial(decode_upload, data, (1, 28, 28), max_pixels=4096 * 4096), BadImage),
        )
        for reader, refusal in readers:
            try:
                reader()
                outcomes["read"] += 1
            except refusal as e:
                outcomes["refused"] += 1
                if "\n" in str(e):  # not one line
                    escaped.append(f"{name}: a message of many lines: {e}")
            except Exception as e:
                escaped.append(f"{name}: {type(e).__name__}: {e}")
    assert not escaped, f"{len(escaped)} escaped: {escaped[:5]}"
    return outcomes


def fuzz_server(cases: int, seed: int) -> Counter:
    statuses: Counter = Counter()
    limits = Limits(max_upload_bytes=64 * 2**10, max_upload_pixels=512 * 512)
    with TestClient(create_app(ddim.load("toy"), limits), raise_server_exceptions=False) as client:
        for name, data in mutated_images(cases, seed):
            r = client.post("/api/invert?steps=1", content=data)
            assert r.status_code < 500, (name, r.status_code, r.text)
            assert r.status_code in (200, 413, 422), (name, r.status_code)
            statuses[r.status_code] += 1
    return statuses


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_no_exception_escapes_the_image_readers(tmp_path):
    outcomes = fuzz_readers(tmp_path, CI, seed=0)
    assert outcomes["refused"] > CI // 4  # the mutations do damage
    assert outcomes["read"] > 0  # and some damage Pillow reads through


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_no_mutated_upload_makes_a_server_error():
    statuses = fuzz_server(CI // 3, seed=1)
    assert statuses[422] > 0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_four_thousand_mutated_images(tmp_path):
    outcomes = fuzz_readers(tmp_path, SLOW, seed=2)
    statuses = fuzz_server(SLOW, seed=3)
    print(f"\nreaders, {SLOW} images × 2: {dict(outcomes)}; server, {SLOW} uploads: {dict(statuses)}")
