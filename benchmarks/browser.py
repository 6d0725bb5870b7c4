"""A served page in a real browser: `ddim.serve` on uvicorn at 127.0.0.1 in a thread, and Debian's
headless Chromium driven by Playwright (never a downloaded browser). Shared by tests/serve and
benchmarks/serve_screenshots.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")  # apt-get install chromium
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
DESKTOP: dict[str, Any] = {"viewport": {"width": 1000, "height": 1200}}
PHONE: dict[str, Any] = {
    "viewport": {"width": 375, "height": 740},
    "device_scale_factor": 2,
    "is_mobile": True,
}


@contextmanager
def live_server(app) -> Iterator[str]:
    """Run `app` on uvicorn at 127.0.0.1 on a free port, in a thread; yield its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium from CHROMIUM, closed on exit."""
    from playwright.sync_api import sync_playwright  # a dev dependency: imported only when used

    if not CHROMIUM.exists():
        raise FileNotFoundError(f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser: Browser, url: str, device: dict[str, Any]) -> Page:
    """A new tab of `device` (DESKTOP, PHONE) at `url`, once the page has read the model's info."""
    page = browser.new_page(**device)
    page.goto(url)
    page.wait_for_selector("#model-name:not(:empty)")
    return page
