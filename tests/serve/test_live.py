"""A real server on 127.0.0.1: clients that leave cancel their jobs, and 20 at once get images or 429."""

import io
import threading
import time

import httpx
import pytest
from benchmarks.browser import live_server
from PIL import Image

from ddim.serve import Limits, create_app
from serving import LIMITS, slow_model

CLIENTS = 20


def wait_for(url: str, key: str, value: int, seconds: float = 20) -> dict:
    """Poll /api/status until status[key] == value (or give up after `seconds`)."""
    deadline = time.monotonic() + seconds
    while (status := httpx.get(f"{url}/api/status").json())[key] != value and time.monotonic() < deadline:
        time.sleep(0.05)
    return status


def test_a_client_that_disconnects_cancels_its_job(tiny_model):
    app = create_app(slow_model(tiny_model, 0.1), LIMITS)  # 30 steps: 3 s if nobody stops it
    with live_server(app) as url:
        with httpx.stream("POST", f"{url}/api/sample/stream", json={"steps": 30}, timeout=30) as r:
            lines = r.iter_lines()
            assert next(lines) == "event: queued"
            while next(lines) != "event: step":
                pass
        start = time.monotonic()
        status = wait_for(url, "cancelled", 1)
        assert status == {"pending": 0, "completed": 0, "cancelled": 1, "failed": 0, "rejected": 0}
        assert time.monotonic() - start < 2.5  # stopped, not run to its end

        with pytest.raises(httpx.ReadTimeout):  # the plain PNG route: the client gives up
            httpx.post(f"{url}/api/sample", json={"steps": 30}, timeout=0.5)
        assert wait_for(url, "cancelled", 2)["completed"] == 0


def test_twenty_concurrent_clients_get_images_or_429_and_the_server_stays_responsive(tiny_model):
    app = create_app(slow_model(tiny_model, 0.02), Limits(max_n=8, max_steps=30, max_queue=3))
    barrier, results = threading.Barrier(CLIENTS), [None] * CLIENTS

    def client(i: int, url: str) -> None:
        barrier.wait(timeout=30)
        try:
            results[i] = httpx.post(f"{url}/api/sample", json={"n": 4, "steps": 20, "seed": i}, timeout=60)
        except httpx.HTTPError as e:  # a refused or dropped connection is a failure too
            results[i] = e

    with live_server(app) as url:
        threads = [threading.Thread(target=client, args=(i, url)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        codes = [getattr(r, "status_code", repr(r)) for r in results]
        assert set(codes) <= {200, 429}, codes
        assert 200 in codes  # some were served…
        assert 429 in codes  # …and the bounded queue refused the rest at once
        for r in results:
            if r.status_code == 200:
                with Image.open(io.BytesIO(r.content)) as im:
                    assert im.size == (22, 22)  # 4 tiles of 8 px, 2 by 2
            else:
                assert int(r.headers["retry-after"]) >= 1
        status = wait_for(url, "pending", 0)
        assert status["completed"] == codes.count(200)
        assert status["rejected"] == codes.count(429)
        after = httpx.post(f"{url}/api/sample", json={"n": 1, "steps": 2}, timeout=30)
        assert after.status_code == 200
        assert httpx.get(url, timeout=30).status_code == 200
