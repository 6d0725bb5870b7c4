"""Issue 24's reproductions, each a test: malformed images, headers that lie about sizes, run
folders killed or tampered with, full disks, bad converter configs, library edge cases. The
malformed inputs are generated here (tests/corpus.py)."""

import io
import tracemalloc
import zipfile

import numpy as np
import pytest

import ddim
from corpus import bad_dds, forge_checkpoint, image_files, npy_with_header, write_npz
from ddim.data import DataError, load_images, read_npz
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
    with pytest.raises(DataError, match=r"x_test is 1.5 MiB, more than this machine's memory .*--limit"):
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
