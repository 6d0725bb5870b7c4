"""Datasets in: npz and image folders give the same uint8 images; fitting; clear errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddim.data import DataError, fit_images, load_images, load_labels, to_model_range


@pytest.fixture
def digits(tmp_path):
    """Five random 6×6 grayscale images, as an npz and as a nested PNG folder."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=images, x_test=images[:2])
    for i, img in enumerate(images):
        (tmp_path / "png" / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / "png" / str(i % 2) / f"{i}.png")
    return tmp_path, images


def test_npz_and_folder_give_the_same_pixels(digits):
    root, images = digits
    x = load_images(root / "d.npz")
    assert x.dtype == torch.uint8
    assert x.shape == (5, 1, 6, 6)
    assert np.array_equal(x[:, 0].numpy(), images)
    assert load_images(root / "d.npz", key="x_test").shape == (2, 1, 6, 6)
    folder = load_images(root / "png")  # sorted by path: 0/0, 0/2, 0/4, 1/1, 1/3
    assert np.array_equal(folder[:, 0].numpy(), images[[0, 2, 4, 1, 3]])
    single = load_images(root / "png" / "1" / "3.png", channels=3)
    assert single.shape == (1, 3, 6, 6)
    assert np.array_equal(single[0, 2].numpy(), images[3])


def test_rgb_folder_and_limit(tmp_path):
    rgb = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    for i, img in enumerate(rgb):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    x = load_images(tmp_path, limit=1)
    assert x.shape == (1, 3, 4, 4)
    assert np.array_equal(x[0].permute(1, 2, 0).numpy(), rgb[0])


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    """A 16-bit PNG opens as "I;16"; Pillow's own convert("L") would clip it to white. Here 65535 ↦
    255 (÷ 257, the 8-bit value that 16-bit value was made from), for files and for uploads."""
    from ddim.serve.images import decode_upload

    levels = np.arange(256, dtype=np.uint16).reshape(16, 16) * 257  # every 8-bit value, widened
    Image.fromarray(levels).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # a 16-bit image indeed
    x = load_images(tmp_path / "g16.png")
    assert np.array_equal(x[0, 0].numpy(), np.arange(256).reshape(16, 16))
    upload = decode_upload((tmp_path / "g16.png").read_bytes(), (1, 16, 16), max_pixels=1024)
    torch.testing.assert_close(upload, to_model_range(x), rtol=0, atol=1e-6)


def test_pad_centres_on_black_and_resize_crops():
    x = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    padded = fit_images(x, 32, "pad")
    assert padded.shape == (2, 1, 32, 32)
    assert padded[:, :, 2:30, 2:30].eq(255).all()
    assert padded.sum().item() == 2 * 28 * 28 * 255  # the border is black (0)
    wide = torch.zeros(1, 3, 20, 40, dtype=torch.uint8)
    wide[..., 10:30] = 200  # the centre 20×20 square
    resized = fit_images(wide, 10, "resize")
    assert resized.shape == (1, 3, 10, 10)
    # shorter side to 10 (scale 1/2), then the centre crop keeps the square; bicubic blurs 2 px
    assert resized[..., 2:8].eq(200).all()
    with pytest.raises(DataError, match="resize"):
        fit_images(x, 16, "pad")


def test_model_range_endpoints():
    x = torch.tensor([0, 255], dtype=torch.uint8)
    assert to_model_range(x).tolist() == [-1.0, 1.0]


def test_bad_datasets_get_one_line_errors(tmp_path, digits):
    root, _ = digits
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "f.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "float.npz", x_train=np.zeros((2, 4, 4), dtype=np.float32))
    cases = [
        (tmp_path / "missing.npz", {}, "no such dataset"),
        (root / "d.npz", {"key": "images"}, "no array 'images'"),
        (tmp_path / "f.npz", {}, "not a readable .npz"),
        (tmp_path / "float.npz", {}, "uint8"),
        (tmp_path / "broken.png", {}, "cannot read this image"),
        (tmp_path / "empty", {}, "holds no images"),
    ]
    (tmp_path / "empty").mkdir()
    for path, kwargs, message in cases:
        with pytest.raises(DataError, match=message) as err:
            load_images(path, **kwargs)
        assert "\n" not in str(err.value)


def test_mixed_sizes_need_a_resolution(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(DataError, match=r"b\.png is 6×6 but .*a\.png is 4×4"):
        load_images(tmp_path)
    assert load_images(tmp_path, resolution=8).shape == (2, 1, 8, 8)


def test_labels_from_npz_and_from_sub_folder_names(digits, tmp_path):
    root, images = digits
    np.savez(tmp_path / "l.npz", x_train=images, y_train=np.array([3, 0, 1, 3, 2], dtype=np.uint8))
    y, names = load_labels(tmp_path / "l.npz")
    assert (y.tolist(), names, y.dtype) == ([3, 0, 1, 3, 2], ("0", "1", "2", "3"), torch.int64)
    assert load_labels(tmp_path / "l.npz", limit=2)[0].tolist() == [3, 0]
    for i, name in enumerate(["zebra", "ant", "zebra", "moth", "ant"]):  # the same order as load_images
        (tmp_path / "named" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(tmp_path / "named" / name / f"{i}.png")
    y, names = load_labels(tmp_path / "named")
    assert names == ("ant", "moth", "zebra")
    x = load_images(tmp_path / "named")  # ant/1, ant/4, moth/3, zebra/0, zebra/2
    assert np.array_equal(x[:, 0].numpy(), images[[1, 4, 3, 0, 2]])
    assert y.tolist() == [0, 0, 1, 2, 2]
    assert load_labels(root / "png")[1] == ("0", "1")


def test_bad_labels_get_one_line_errors(digits, tmp_path):
    root, images = digits
    np.savez(tmp_path / "f.npz", x_train=images, y_train=np.zeros(5, np.float32), y_neg=np.full(5, -1))
    Image.fromarray(images[0]).save(tmp_path / "png-loose.png")
    (tmp_path / "mixed" / "a").mkdir(parents=True)
    Image.fromarray(images[0]).save(tmp_path / "mixed" / "a" / "0.png")
    Image.fromarray(images[1]).save(tmp_path / "mixed" / "1.png")
    cases = [
        (root / "d.npz", {}, "has no array 'y_train'"),
        (tmp_path / "f.npz", {}, "must hold class labels, non-negative integers of shape"),
        (tmp_path / "f.npz", {"key": "y_neg"}, "must hold class labels"),
        (tmp_path / "f.npz", {"key": "x_train"}, "must hold class labels"),
        (tmp_path / "mixed", {}, r"1\.png is not in a class sub-folder"),
        (tmp_path / "png-loose.png", {}, "class labels come from an .npz array or an image folder"),
    ]
    for path, kwargs, message in cases:
        with pytest.raises(DataError, match=message) as err:
            load_labels(path, **kwargs)
        assert "\n" not in str(err.value)
