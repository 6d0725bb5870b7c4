"""In-process clients for the serve tests."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

import ddim
from ddim.serve import create_app
from ddim.toy import toy_model
from serving import LIMITS


@pytest.fixture
def client(tiny_checkpoint) -> Iterator[TestClient]:
    """The app over the tiny U-Net checkpoint (8×8 grey, T = 100), with small limits."""
    with TestClient(create_app(ddim.load(tiny_checkpoint), LIMITS, name=str(tiny_checkpoint))) as c:
        yield c


@pytest.fixture
def conditional_client() -> Iterator[TestClient]:
    """The analytic class-conditional toy model (32×32 glyphs, one class each, T = 1000)."""
    with TestClient(create_app(toy_model(conditional=True), LIMITS, name="toy-cond")) as c:
        yield c
