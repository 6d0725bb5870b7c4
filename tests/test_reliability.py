"""Issue 24's reproductions, each a test: malformed images, headers that lie about sizes, run
folders killed or tampered with, full disks, bad converter configs, library edge cases. The
malformed inputs are generated here (tests/corpus.py)."""

import errno
import io
import os
import re
import shutil
import signal
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ddim
from conftest import tiny_unet_model
from corpus import bad_dds, forge_checkpoint, image_files, npy_with_header, write_npz
from ddim import runs, training
from ddim.data import DataError, load_images, read_npz
from ddim.runs import RunFolder
from ddim.train_config import TrainConfig, load_toml, to_toml
from ddim.training import train
from helpers import run_cli
from test_cli_errors import assert_refused

TIB = 2**40
pytestmark = pytest.mark.filterwarnings("ignore:IM image format is deprecated:DeprecationWarning")


# -- 2. malformed images -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(image_files()))
def test_every_format_pillow_writes_reads_as_an_image(tmp_path, fmt):
    path = tmp_path / f"image.{fmt.lower()}.png"  # the name says PNG whatever it holds
    path.write_bytes(image_files()[fmt])
    x = load_images(path, resolution=28, channels=1)
    assert x.shape == (1, 1, 28, 28)
    assert x.dtype == ddim.data.torch.uint8


def test_a_dds_with_a_bad_pixel_format_is_one_line_in_invert(capsys, tmp_path, tiny_checkpoint):
    (tmp_path / "bad.png").write_bytes(bad_dds())
    code, _, err = run_cli(capsys, "invert", "--model", tiny_checkpoint, "--images", tmp_path / "bad.png",
                           "--out", tmp_path / "z.npz", "--quiet")  # fmt: skip
    assert_refused(code, err, f"{tmp_path / 'bad.png'}: cannot read this image", "pixel format")
    assert not (tmp_path / "z.npz").exists()


def test_a_dds_with_a_bad_pixel_format_in_a_training_folder_is_one_line(capsys, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.png").write_bytes(image_files()["PNG"])
    (tmp_path / "data" / "b.png").write_bytes(bad_dds())
    net = ["--set", "net.resolution=28", "--set", "net.attn_resolutions=[14]", "--quiet"]
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "data", "--out", tmp_path / "run", *net)
    assert_refused(code, err, f"{tmp_path / 'data' / 'b.png'}: cannot read this image")
    assert not (tmp_path / "run").exists()


# -- 3. headers that lie about sizes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"net": {"ch": 10**7, "norm_groups": 4}}, "the architecture needs"),  # ~10¹⁴ floats
        ({"net": {"resolution": 100_000}, "image_shape": [1, 100_000, 100_000]}, "at most 67,108,864"),
        ({"image_shape": [1, 100_000, 100_000]}, "at most 67,108,864"),
    ],
    ids=["huge-net", "huge-image", "huge-image-shape-only"],
)
@pytest.mark.parametrize("command", ["info", "sample"])
def test_a_checkpoint_config_claiming_a_huge_model_is_refused_before_allocating(
    capsys, tmp_path, tiny_checkpoint, changes, message, command
):
    forged = forge_checkpoint(tiny_checkpoint, tmp_path / "forged.safetensors", **changes)
    tracemalloc.start()
    try:
        args = [forged] if command == "info" else ["--model", forged, "--out", tmp_path / "s.png", "--quiet"]
        code, _, err = run_cli(capsys, command, *args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_refused(code, err, forged, message)
    assert peak < 64 * 2**20  # nothing of the claimed size was allocated


def test_a_mixture_claiming_a_huge_size_is_refused(tmp_path):
    forged = forge_checkpoint(ddim.save(ddim.load("toy"), tmp_path / "toy.safetensors"),
                              tmp_path / "forged.safetensors", net={"num_components": 10**9})  # fmt: skip
    with pytest.raises(ddim.checkpoint.CheckpointError, match="the architecture needs"):
        ddim.load(forged)


def test_an_npz_header_claiming_713_tib_is_refused_before_allocating(capsys, tmp_path, tiny_checkpoint):
    shape = (713 * TIB // 784, 28, 28)
    path = write_npz(tmp_path / "lie.npz", {"x_test": npy_with_header(shape, data=b"\0" * 784)})
    code, _, err = run_cli(capsys, "invert", "--model", tiny_checkpoint, "--images", path,
                           "--out", tmp_path / "z.npz", "--quiet")  # fmt: skip
    assert_refused(code, err, f"{path}:x_test: its header declares shape", "713 TiB", "file holds 784 bytes")


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (npy_with_header((4, 28, 28), data=b"\0" * 100), "the file holds 100 bytes"),  # claims more
        (npy_with_header((1, 2), "|O", b"\0" * 16), "holds Python objects; refused: loading them could run"),
        (b"\x93NUMPY\x01\x00\xff\xff{'descr'", "is not a readable .npz file"),  # a header cut short
    ],
    ids=["short", "objects", "cut-header"],
)
def test_npz_array_headers_are_checked(tmp_path, member, message):
    path = write_npz(tmp_path / "bad.npz", {"x_train": member})
    with pytest.raises(DataError, match=message):
        load_images(path)


def _deflate_bomb(path, images: int) -> tuple:
    """A compressed .npz of `images` black 28×28 images: about 1000× smaller than its array."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.zeros((images, 28, 28), np.uint8))
    return write_npz(path, {"x_test": buffer.getvalue()}, compress=True)


def test_a_deflate_bomb_is_read_only_as_far_as_the_limit(tmp_path):
    path = _deflate_bomb(tmp_path / "bomb.npz", 80_000)  # 63 MB of zeros in 61 kB
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        x = load_images(path, key="x_test", limit=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert x.shape == (1, 1, 28, 28)
    assert peak < 4 * 2**20  # the array is 63 MB: it was not decompressed whole
    np.testing.assert_array_equal(read_npz(path, ["x_test"], limit=3)["x_test"], np.zeros((3, 28, 28)))


def test_an_array_larger_than_memory_is_refused_and_limit_is_suggested(tmp_path, monkeypatch):
    path = _deflate_bomb(tmp_path / "bomb.npz", 2_000)
    monkeypatch.setattr("ddim.data._memory_bytes", lambda: 2**20)  # a 1 MiB machine
    with pytest.raises(DataError, match=r"x_test is 1.5 MiB, more than this machine's memory .*limit=N"):
        load_images(path, key="x_test")
    assert load_images(path, key="x_test", limit=100).shape == (100, 1, 28, 28)


def test_npz_arrays_read_back_exactly_in_every_layout(tmp_path):
    arrays = {"c": np.arange(24, dtype=np.int16).reshape(2, 3, 4), "f": np.asfortranarray(
        np.arange(24.0).reshape(4, 6)), "s": np.array(3.5), "e": np.zeros((0, 5), np.uint8)}  # fmt: skip
    for compress in (np.savez, np.savez_compressed):
        compress(tmp_path / "a.npz", **arrays)
        got = read_npz(tmp_path / "a.npz", list(arrays))
        for k, v in arrays.items():
            np.testing.assert_array_equal(got[k], v)
            assert got[k].dtype == v.dtype
        assert read_npz(tmp_path / "a.npz", ["f"], limit=2)["f"].tolist() == arrays["f"][:2].tolist()
    assert zipfile.is_zipfile(tmp_path / "a.npz")


# -- 5. runs killed at any moment --------------------------------------------------------------

RUN = {"net": {"resolution": 8, "in_channels": 1, "out_channels": 1, "ch": 8, "ch_mult": [1, 2],
               "num_res_blocks": 1, "attn_resolutions": [4], "dropout": 0.1, "norm_groups": 4},
       "steps": 4, "batch_size": 4, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 2,
       "sample_every": 2, "sample_n": 2, "sample_steps": 2, "num_timesteps": 20, "hflip": True}  # fmt: skip


class Killed(BaseException):
    """The process dying (kill -9) just before a file goes into place."""


@pytest.fixture
def recipe(tmp_path):
    """A tiny run's config file, and the argv that starts it."""
    data = tmp_path / "data.npz"
    np.savez(data, x_train=np.random.default_rng(0).integers(0, 256, size=(12, 8, 8), dtype=np.uint8))
    config = tmp_path / "run.toml"
    config.write_text(to_toml(TrainConfig.from_dict({**RUN, "data": str(data)}).to_dict()))
    return config


def kill_at(monkeypatch, moment: int | None) -> list[str]:
    """Make the `moment`-th file that atomic_write puts into place kill the run instead (its
    temporary file left behind, as a real kill leaves it); returns the names put into place."""
    replace, placed = os.replace, []

    def dying_replace(src, dst):
        if len(placed) + 1 == moment:
            shutil.copy(src, f"{src}.left.tmp")
            raise Killed
        placed.append(Path(dst).name)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    return placed


def finish_as_documented(capsys, recipe, out) -> None:
    """`ddim train --out RUN --resume` (a run folder with a config), else the first command again."""
    argv = ["--resume"] if (out / "config.toml").exists() else ["--config", recipe]
    code, _, err = run_cli(capsys, "train", "--out", out, *argv, "--quiet")
    assert code == 0, err


def weights(out):
    return load_file(out / "model.safetensors")


def test_a_run_killed_at_any_moment_finishes_with_the_uninterrupted_model(
    capsys, tmp_path, recipe, monkeypatch
):
    placed = kill_at(monkeypatch, None)
    config = TrainConfig.from_dict(load_toml(recipe))
    train(config, tmp_path / "whole", progress=False)
    reference, moments = weights(tmp_path / "whole"), len(placed)
    assert placed[-2:] == ["loss.png", "model.safetensors"]
    assert moments == 9  # config, 2 × (sample grid, state, model), loss curve, model
    for moment in range(1, moments + 1):
        out = tmp_path / f"killed-{moment}"
        kill_at(monkeypatch, moment)
        with pytest.raises(Killed):
            train(config, out, progress=False)
        monkeypatch.undo()
        finish_as_documented(capsys, recipe, out)
        got = weights(out)
        assert all(torch.equal(got[k], reference[k]) for k in reference), f"killed at moment {moment}"
        assert [r["step"] for r in RunFolder(out).records()] == [1, 2, 3, 4]


def test_a_finished_run_is_not_trained_again(capsys, tmp_path, recipe):
    code, _, err = run_cli(capsys, "train", "--config", recipe, "--out", tmp_path / "run", "--quiet")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "run", "--resume", "--quiet")
    assert_refused(code, err, "is at step 4, and steps=4: nothing to train")


@pytest.mark.parametrize("where", ["load_images", "UNet"])
def test_sigterm_before_the_first_step_exits_130_saying_what_to_run(
    capsys, tmp_path, recipe, monkeypatch, where
):
    real = getattr(training, where)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode, inside this call
        return real(*args, **kwargs)

    monkeypatch.setattr(training, where, signalled)
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", "--config", recipe, "--out", out, "--quiet")
    assert code == 130, err
    assert err == ""
    assert stdout.startswith("interrupted before the first training step: nothing needed saving\n")
    assert ("--resume" in stdout) == (where == "UNet")  # the data loads before the folder is made
    monkeypatch.undo()
    finish_as_documented(capsys, recipe, out)
    train(TrainConfig.from_dict(load_toml(recipe)), tmp_path / "whole", progress=False)
    reference = weights(tmp_path / "whole")
    assert all(torch.equal(weights(out)[k], reference[k]) for k in reference)


# -- 6. a full disk while checkpointing ----------------------------------------------------------


class FullDisk(io.RawIOBase):
    """A file on a disk that fills after `room` bytes."""

    def __init__(self, room: int):
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return len(data)


@pytest.mark.parametrize("room", [0, 3000])  # full at once, or part-way through torch's zip
def test_a_full_disk_while_checkpointing_is_one_line_and_the_run_resumes(
    capsys, tmp_path, recipe, monkeypatch, room
):
    out = tmp_path / "run"
    real_save = runs._torch_save

    def full_at_step_4(obj, f):
        return real_save(obj, FullDisk(room) if obj["step"] == 4 else f)

    monkeypatch.setattr(runs, "_torch_save", full_at_step_4)
    code, _, err = run_cli(capsys, "train", "--config", recipe, "--out", out, "--quiet")
    assert_refused(code, err, f"cannot write {out / 'checkpoints' / 'step-00000004.state.pt'}: No space left")
    assert RunFolder(out).steps() == [2]  # the last good checkpoint stays
    monkeypatch.undo()
    finish_as_documented(capsys, recipe, out)
    assert RunFolder(out).steps() == [2, 4]


# -- 7. tampered run folders ---------------------------------------------------------------------


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch ran-code",))


def _tamper_state(path: Path, change) -> None:
    torch.save(change(torch.load(path, weights_only=True)), path)


def _without_net(state):
    return {k: v for k, v in state.items() if k != "net"}


def _wrong_shape(state):
    return {**state, "net": {**state["net"], "conv_in.weight": torch.zeros(3)}}


def _wrong_optimizer(state):
    moments = state["optimizer"]["state"]
    return {
        **state,
        "optimizer": {
            **state["optimizer"],
            "state": {**moments, 0: {**moments[0], "exp_avg": torch.zeros(2)}},
        },
    }


def _other_ema(path: Path) -> None:
    ddim.save(tiny_unet_model(ch=16), path.with_name(path.name.replace(".state.pt", ".safetensors")))


TAMPERINGS = {
    "no-net": (
        lambda p: _tamper_state(p, _without_net),
        "the training state is damaged (missing or wrong: ['net'])",
    ),
    "wrong-shape": (
        lambda p: _tamper_state(p, _wrong_shape),
        "conv_in.weight has shape (3,), the architecture needs",
    ),
    "optimizer-shape": (
        lambda p: _tamper_state(p, _wrong_optimizer),
        "the optimizer's exp_avg has shape (2,) for a",
    ),
    "pickle-runs-code": (lambda p: torch.save(RunsCode(), p), "loading it could run code"),
    "not-a-pickle": (lambda p: p.write_bytes(b"garbage"), "is not a PyTorch checkpoint"),
    "ema-wrong-net": (_other_ema, "the architecture needs"),
}


@pytest.mark.filterwarnings("error")  # a torch warning would be more lines of output
@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_a_tampered_checkpoint_is_refused_in_one_line(capsys, tmp_path, recipe, monkeypatch, name):
    out = tmp_path / "run"
    run_cli(capsys, "train", "--config", recipe, "--out", out, "--steps", 2, "--quiet")
    tamper, message = TAMPERINGS[name]
    tamper(out / "checkpoints" / "step-00000002.state.pt")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--steps", 4, "--quiet")
    assert_refused(code, err, "step-00000002.", message)
    assert not (tmp_path / "ran-code").exists()


@pytest.mark.parametrize(
    ("line", "number"), [('{"loss": 0.5}', 2), ('{"step": 1, "loss": "low"}', 2), ("[1]", 2)]
)
def test_a_tampered_log_line_is_refused_in_one_line(capsys, tmp_path, recipe, line, number):
    out = tmp_path / "run"
    run_cli(capsys, "train", "--config", recipe, "--out", out, "--steps", 2, "--quiet")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--steps", 4, "--quiet")
    assert_refused(code, err, f"metrics.jsonl: line {number} is not a log record")


# -- 10. library edges ---------------------------------------------------------------------------


def _returns_none(x, t):
    return None


def _returns_one_channel_too_many(x, t):
    return torch.zeros(x.shape[0], x.shape[1] + 1, *x.shape[2:])


@pytest.mark.parametrize(
    ("eps_fn", "got"), [(_returns_none, "NoneType"), (_returns_one_channel_too_many, "shape (2, 2, 4, 4)")]
)
def test_a_callable_returning_the_wrong_thing_is_a_value_error_naming_it(eps_fn, got):
    schedule = ddim.NoiseSchedule.linear(10)
    with pytest.raises(ValueError, match=rf"the model {eps_fn.__name__} returned {re.escape(got)} for an "
                       r"input of shape \(2, 1, 4, 4\)"):  # fmt: skip
        ddim.sample(eps_fn, noise=torch.zeros(2, 1, 4, 4), schedule=schedule, steps=2)
    with pytest.raises(ValueError, match=f"the model {eps_fn.__name__} returned"):
        ddim.invert(eps_fn, torch.zeros(2, 1, 4, 4), schedule=schedule, steps=2)


def test_slerp_of_a_zero_or_non_finite_latent_is_refused_not_nan():
    z = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0))
    for bad, message in ((torch.zeros_like(z), "is all zeros"), (z * torch.nan, "holds NaN or infinite")):
        with pytest.raises(ValueError, match=f"z0 {message}"):
            ddim.slerp(bad, z, 0.5)
        with pytest.raises(ValueError, match=f"z1 {message}"):
            ddim.slerp(z, bad, [0.0, 1.0])
