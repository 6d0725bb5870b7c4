"""Bad input through the `ddim` command: one line naming the offending thing and exit 2, never a
traceback, and nothing written earlier lost."""

import pytest

from helpers import run_cli

# the options each command needs to get as far as the one under test, and no further (cheaply)
REQUIRED = {
    "sample": ["--model", "toy", "--dry-run"],
    "invert": ["--model", "toy", "--images", "missing.npz"],
    "train": ["--out", "run", "--dry-run"],
    "evaluate": ["--model", "toy", "--ref", "missing.npz"],
    "serve": ["--model", "missing.safetensors"],
}


def assert_refused(code, err, *names):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for name in names:
        assert str(name) in err, err


@pytest.mark.parametrize("command", sorted(REQUIRED))
@pytest.mark.parametrize("device", ["cuda:99", "meta"])
def test_a_device_this_machine_lacks_is_refused_before_any_work(capsys, command, device):
    code, _, err = run_cli(capsys, command, *REQUIRED[command], "--device", device)
    assert_refused(code, err, f"device '{device}' is not available")


@pytest.mark.parametrize("port", ["65536", "70000"])
def test_serve_refuses_a_port_past_65535(capsys, port):
    code, _, err = run_cli(capsys, "serve", "--model", "missing.safetensors", "--port", port)
    assert_refused(code, err, f"argument --port: must be in [0, 65535], got {port}")
