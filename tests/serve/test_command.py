"""`ddim serve`: options reach the app, the default address is this machine, bad input is one line."""

import socket

import pytest
import uvicorn

from ddim.cli import build_parser
from helpers import run_cli as run


@pytest.fixture
def served(monkeypatch):
    """Capture the app and the listening socket `ddim serve` would hand to uvicorn, instead of serving."""
    calls = []

    def run(server, sockets):
        ((sock,),) = (sockets,)
        calls.append((server.config.app, sock.getsockname()[:2]))

    monkeypatch.setattr(uvicorn.Server, "run", run)
    return calls


def test_serve_binds_to_this_machine_by_default_and_passes_the_limits(capsys, served, tiny_checkpoint):
    argv = ["--model", tiny_checkpoint, "--max-n", "3", "--max-upload-kb", "5", "--port", "0"]
    code, out, err = run(capsys, "serve", *argv)
    assert code == 0
    assert err == ""  # no warning for 127.0.0.1
    ((app, (host, port)),) = served
    assert host == "127.0.0.1"
    assert port > 0  # --port 0: any free port; without it, 8000
    assert out == f"serving {tiny_checkpoint} on http://127.0.0.1:{port}/ (Ctrl-C to stop)\n"
    assert build_parser().parse_args(["serve"]).port == 8000
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        info = c.get("/api/model").json()
    assert info["name"] == "tiny.safetensors"
    assert (info["limits"]["max_n"], info["limits"]["max_upload_bytes"]) == (3, 5120)


def test_serving_beyond_this_machine_warns(capsys, served):
    code, out, err = run(capsys, "serve", "--model", "toy", "--host", "0.0.0.0", "--port", "0")
    assert code == 0
    assert err.startswith("warning: serving on 0.0.0.0: anyone who can reach this machine")  # stderr
    assert out.startswith("serving toy on http://0.0.0.0:")
    assert served[0][1][0] == "0.0.0.0"


def test_an_address_that_cannot_be_listened_on_is_one_line_before_the_model_loads(capsys, served):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        code, out, err = run(capsys, "serve", "--model", "no-such-model", "--port", str(port))
    assert (code, out, served) == (2, "", [])
    assert err == f"ddim serve: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    code, out, err = run(capsys, "serve", "--model", "toy", "--host", "192.0.2.1", "--port", "0")
    assert (code, out, served) == (2, "", [])  # TEST-NET-1 (RFC 5737): no machine's address; no warning
    assert err == "ddim serve: error: cannot listen on 192.0.2.1:0: Cannot assign requested address\n"
    code, out, err = run(capsys, "serve", "--model", "toy", "--host", "256.1.1.1", "--port", "0")
    assert (code, out, served) == (2, "", [])
    assert err == "ddim serve: error: cannot listen on 256.1.1.1:0: unknown host or invalid address\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "no-such-model"], "not a built-in model: no-such-model"),
        (["--model", "toy", "--max-n", "0"], "argument --max-n: must be >= 1, got 0"),
        (["--model", "toy", "--port", "http"], "argument --port: expected an integer, got 'http'"),
        (["--model", "toy", "--max-frames", "1"], "argument --max-frames: must be >= 2, got 1"),
    ],
)
def test_bad_options_get_one_line(capsys, served, argv, message):
    code, _, err = run(capsys, "serve", *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert served == []


def test_help_has_examples(capsys):
    code, out, _ = run(capsys, "serve", "--help")
    assert code == 0
    assert "examples:" in out
    assert "127.0.0.1" in out
