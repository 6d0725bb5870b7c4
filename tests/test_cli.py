"""The `ddim` command end to end: files written, numbers equal to the API, errors in one line."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import ddim
from helpers import run_cli as run


def test_help_lists_commands_and_examples(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "sample" in out
    assert "info" in out
    code, out, _ = run(capsys, "sample", "--help")
    assert code == 0
    assert "examples:" in out
    assert "--eta" in out


def test_sample_end_to_end_through_the_real_command(tmp_path, tiny_checkpoint):
    """A subprocess, as a user runs it: every output, and the numbers equal to the API's."""
    cmd = [sys.executable, "-m", "ddim", "sample", "--model", tiny_checkpoint, "--n", "5", "--steps", "4",
           "--eta", "0.5", "--seed", "11", "--batch-size", "2", "--out", tmp_path / "grid.png",
           "--out-dir", tmp_path / "imgs", "--npz", tmp_path / "s.npz", "--trajectory", tmp_path / "t.gif",
           "--nrow", "5", "--quiet"]  # fmt: skip
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size == (5 * 10 + 2, 10 + 2)  # 5 images of 8 px, 2 px padding
    assert sorted(p.name for p in (tmp_path / "imgs").glob("*.png")) == [f"{i:06d}.png" for i in range(5)]
    with Image.open(tmp_path / "t.gif") as im:
        assert im.n_frames >= 2  # (identical consecutive frames are merged)
    data = np.load(tmp_path / "s.npz")
    assert data["images"].shape == (5, 8, 8, 1)
    assert data["images"].dtype == np.uint8
    expected = ddim.sample(ddim.load(tiny_checkpoint), 5, steps=4, eta=0.5, seed=11)
    torch.testing.assert_close(torch.from_numpy(data["x"]), expected, rtol=1e-5, atol=1e-5)
    with Image.open(tmp_path / "imgs" / "000003.png") as im:
        assert np.array_equal(np.asarray(im), data["images"][3, :, :, 0])


def test_default_output_is_a_grid(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "sample", "--n", "4", "--steps", "3", "--quiet")
    assert code == 0
    assert (tmp_path / "samples.png").is_file()
    assert "4 samples, 3 steps" in out


def test_dry_run_prints_the_resolved_timesteps(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "sample", "--steps", "10", "--spacing", "trailing", "--dry-run")
    assert code == 0
    assert json.loads(out)["timesteps"] == list(range(999, 0, -100))
    assert not (tmp_path / "samples.png").exists()
    code, out, _ = run(capsys, "sample", "--timesteps", "0,500,999", "--dry-run")
    assert json.loads(out)["timesteps"] == [999, 500, 0]


def test_quadratic_repeats_are_reported(capsys, tmp_path):
    code, out, _ = run(capsys, "sample", "--steps", "100", "--spacing", "quadratic", "--n", "1", "--quiet",
                       "--out", tmp_path / "q.png")  # fmt: skip
    assert code == 0
    assert "using its 96 distinct steps" in out


def test_info_describes_a_checkpoint(capsys, tiny_checkpoint):
    code, out, _ = run(capsys, "info", tiny_checkpoint, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["net"]["type"] == "unet"
    assert report["parameters"] == sum(p.numel() for p in ddim.load(tiny_checkpoint).net.parameters())
    assert report["format_version"] == 1
    assert report["schedule"].startswith("T=100")
    code, out, _ = run(capsys, "info")  # the default model: the shipped MNIST U-Net
    assert code == 0
    assert "built-in" in out
    assert "2734945" in out
    code, out, _ = run(capsys, "info", "toy")
    assert "gaussian-mixture" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "--model", "missing.safetensors"], "no such file, and not a built-in model"),
        (["sample", "--steps", "0"], "argument --steps: must be >= 1, got 0"),
        (["sample", "--steps", "1001"], r"steps must be an integer in [1, 1000]"),
        (["sample", "--eta", "1.5"], "argument --eta: must be in [0, 1], got 1.5"),
        (["sample", "--eta", "-0.1"], "argument --eta: must be in [0, 1]"),
        (["sample", "--n", "0"], "argument -n/--n: must be in [1, 100000000]"),
        (["sample", "--spacing", "cubic"], "invalid choice: 'cubic'"),
        (["sample", "--sampler", "ddpm", "--eta", "0.3"], "only for sampler 'ddim'"),
        (["sample", "--timesteps", "5,5"], "distinct"),
        (["sample", "--timesteps", "a,b"], "comma-separated integers"),
        (["sample", "--timesteps", "50,0", "--steps", "3"], "give --steps or --timesteps, not both"),
        (["sample", "--device", "gpu0"], "not a torch device"),
        (["info", "nope"], "not a built-in model"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("damage", ["zeros", "truncated", "missing"])
def test_bad_checkpoint_through_the_real_command(tmp_path, tiny_checkpoint, damage):
    bad = tmp_path / "bad.safetensors"
    if damage == "zeros":
        bad.write_bytes(b"\x00" * 100)
    elif damage == "truncated":
        bad.write_bytes(tiny_checkpoint.read_bytes()[:-10])
    out = tmp_path / "samples.png"
    out.write_bytes(b"earlier results")
    result = subprocess.run(
        [sys.executable, "-m", "ddim", "sample", "--model", str(bad), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("ddim sample: error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == b"earlier results"  # nothing was overwritten


@pytest.mark.parametrize(
    "argv",
    [
        ["--sampler", "plms", "--eta", "0.5"],
        ["--sampler", "ddpm", "--eta", "0.3"],
        ["--class", "3"],  # an unconditional model
        ["--guidance", "2"],  # guidance without classes
        ["--dynamic-threshold", "1.5"],
        ["--timesteps", "5000,10"],
    ],
)
def test_dry_run_refuses_what_a_run_refuses(capsys, tmp_path, argv):
    """Issue 23: --dry-run resolves the plan, so it exits 2 with the real run's one-line error."""
    real = run(capsys, "sample", "--model", "toy", "-n", 1, "--steps", 2, *argv, "--out", tmp_path / "x.png")
    dry = run(capsys, "sample", "--model", "toy", "-n", 1, "--steps", 2, *argv, "--dry-run")
    assert real[0] == dry[0] == 2
    assert dry[2] == real[2]
    assert len(dry[2].strip().splitlines()) == 1


def test_dry_run_prints_the_resolved_plan(capsys):
    code, out, _ = run(capsys, "sample", "--model", "toy", "--sampler", "ddpm", "--spacing", "trailing",
                           "--steps", "4", "--dry-run")  # fmt: skip
    assert code == 0
    settings = json.loads(out)
    assert (settings["eta"], settings["clip"], settings["timesteps"]) == (1.0, False, [999, 749, 499, 249])
