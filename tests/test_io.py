import errno
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

import ddim
from ddim.io import (
    OutputError,
    atomic_write,
    check_writable,
    make_grid,
    save_gif,
    save_json,
    save_png,
    save_trajectory_gif,
    to_uint8,
    together,
)


def test_to_uint8_maps_the_data_range():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 5)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]  # 127.5 rounds half to even
    assert to_uint8(torch.zeros(2, 3, 4, 5)).shape == (2, 4, 5, 3)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        to_uint8(torch.zeros(3, 4, 5))


def test_grid_places_image_i_at_row_i_div_nrow():
    images = np.stack([np.full((2, 3, 1), i, dtype=np.uint8) for i in range(1, 6)])  # 5 images 2×3
    grid = make_grid(images, nrow=2, pad=1)
    assert grid.shape == (3 * 3 + 1, 2 * 4 + 1, 1)
    assert grid[1 + 2 * 3, 1 + 0 * 4, 0] == 5  # image 4 (value 5): row 2, column 0
    assert grid[1, 1 + 4, 0] == 2
    assert grid[0, :, 0].max() == 0  # padding
    assert make_grid(images, nrow=2, pad=0, scale=2).shape == (12, 12, 1)


def test_png_and_gif_are_readable(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    with Image.open(save_png(rgb, tmp_path / "sub" / "a.png")) as im:
        assert np.array_equal(np.asarray(im), rgb)
    frames = [np.full((4, 4, 1), v, dtype=np.uint8) for v in (0, 128, 255)]
    with Image.open(save_gif(frames, tmp_path / "a.gif")) as im:
        assert im.n_frames == 3


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def failing(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no temporary file left
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"
    mask = os.umask(0o022)
    try:
        assert atomic_write(tmp_path / "mode.bin", lambda f: None).stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)


def test_files_written_together_appear_all_at_the_end_or_none(tmp_path):
    (tmp_path / "b.bin").write_bytes(b"old")
    with together():
        atomic_write(tmp_path / "a.bin", lambda f: f.write(b"a"))
        atomic_write(tmp_path / "b.bin", lambda f: f.write(b"b"))
        assert not (tmp_path / "a.bin").exists()  # not yet in place
        assert (tmp_path / "b.bin").read_bytes() == b"old"
    assert [(tmp_path / n).read_bytes() for n in ("a.bin", "b.bin")] == [b"a", b"b"]

    def failing(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    def write_both():
        with together():
            atomic_write(tmp_path / "c.bin", lambda f: f.write(b"c"))
            atomic_write(tmp_path / "d.bin", failing)

    with pytest.raises(OutputError, match=r"cannot write .*d\.bin: No space left on device"):
        write_both()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]  # no c, no temporary files
    atomic_write(tmp_path / "e.bin", lambda f: f.write(b"e"))  # outside the block: at once again
    assert (tmp_path / "e.bin").read_bytes() == b"e"


def test_trajectory_gif_has_a_frame_per_step_and_the_result(tmp_path):
    _, traj = ddim.sample(ddim.load("toy"), 4, steps=6, seed=0, return_trajectory=True)
    with Image.open(save_trajectory_gif(traj, tmp_path / "t.gif")) as im:
        assert im.n_frames == 6 + 1
        assert im.size == (2 * (2 * 66 + 2) + 8, 2 * 66 + 2)  # two 2×2 grids of 64 px images, 8 px apart
    with Image.open(save_trajectory_gif(traj, tmp_path / "short.gif", max_frames=3)) as im:
        assert im.n_frames == 3 + 1


def test_a_failed_write_names_the_file_not_the_temporary_one(tmp_path):
    def disk_full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=f"^cannot write {tmp_path / 'out.bin'}: No space left on device$"):
        atomic_write(tmp_path / "out.bin", disk_full)
    assert list(tmp_path.iterdir()) == []


def test_check_writable_refuses_a_folder_without_write_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user writes in read-only folders (root)")
        for path, folder in ((locked / "x.png", False), (locked / "new" / "x.png", False), (locked, True)):
            with pytest.raises(OutputError, match=f"no permission to write in {locked}$"):
                check_writable(path, folder=folder)
    finally:
        locked.chmod(0o755)
    assert check_writable(locked / "new" / "x.png") == locked / "new" / "x.png"  # created when written


def test_json_reports_write_non_finite_numbers_as_null(tmp_path):
    """JSON has no NaN (the standard error of one sample); strict parsers refuse Python's `NaN`."""
    data = {"rows": [{"mse": 0.5, "sem": math.nan}, (math.inf, 1)], "n": 1}
    path = save_json(tmp_path / "r.json", data)

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "rows": [{"mse": 0.5, "sem": None}, [None, 1]],
        "n": 1,
    }
