"""The latent-space commands end to end: invert, sample --latents, reconstruct, interpolate, consistency."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import ddim
from ddim.io import save_npz
from helpers import run_cli


@pytest.fixture
def cli(capsys):
    """`ddim ARGV` in-process → (exit code, stdout, stderr)."""
    return lambda *argv: run_cli(capsys, *argv)


@pytest.fixture
def digits(tmp_path):
    """Ten 8×8 grayscale uint8 images in an npz (key x_test), as MNIST is stored."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 8, 8), dtype=torch.uint8, generator=g).numpy()
    return save_npz(tmp_path / "digits.npz", x_test=images, x_rgb=np.repeat(images[..., None], 3, -1))


def _x0(digits, n):
    return torch.from_numpy(np.load(digits)["x_test"][:n]).float()[:, None] / 127.5 - 1


def test_invert_then_sample_latents_decodes_them(cli, tmp_path, tiny_checkpoint, digits):
    latents = tmp_path / "lat.npz"
    code, out, err = cli("invert", "--model", tiny_checkpoint, "--images", digits, "--limit", 4,
                         "--steps", 6, "--spacing", "trailing", "--out", latents, "--quiet")  # fmt: skip
    assert code == 0, err
    model = ddim.load(tiny_checkpoint)
    data = np.load(latents)
    expected = ddim.invert(model, _x0(digits, 4), steps=6, spacing="trailing")
    torch.testing.assert_close(torch.from_numpy(data["latents"]), expected)
    assert data["timesteps"].tolist() == ddim.timesteps(100, 6, "trailing").tolist()

    code, out, err = cli("sample", "--model", tiny_checkpoint, "--latents", latents,
                         "--npz", tmp_path / "d.npz", "--quiet")  # fmt: skip
    assert code == 0, err
    assert "4 samples, 6 steps" in out  # the stored sub-sequence, not the default 50
    decoded = torch.from_numpy(np.load(tmp_path / "d.npz")["x"])
    reconstruction = ddim.reconstruct(model, _x0(digits, 4), steps=6, spacing="trailing")
    torch.testing.assert_close(decoded, reconstruction)


def test_reconstruct_prints_table_2_and_writes_every_output(cli, tmp_path, tiny_checkpoint, digits):
    code, out, err = cli("reconstruct", "--model", tiny_checkpoint, "--images", digits, "--steps", "10,3",
                         "--out", tmp_path / "r.png", "--show", 5, "--csv", tmp_path / "r.csv",
                         "--json", tmp_path / "r.json", "--quiet")  # fmt: skip
    assert code == 0, err
    assert "10 images of" in out
    assert "0.014" in out  # the paper's S = 10 beside ours
    report = json.loads((tmp_path / "r.json").read_text())
    assert [r["steps"] for r in report["rows"]] == [10, 3]
    assert report["rows"][0]["paper_cifar10"] == 0.014
    x0 = _x0(digits, 10)
    mse = (ddim.reconstruct(ddim.load(tiny_checkpoint), x0, steps=3) - x0).pow(2).mean().item()
    assert report["rows"][1]["mse"] == pytest.approx(mse, rel=1e-5)
    header = (tmp_path / "r.csv").read_text().splitlines()[0]
    assert header == "steps,evaluations,mse,sem,seconds,paper_cifar10"
    with Image.open(tmp_path / "r.png") as im:
        assert im.size == (5 * 56 + 6 * 2, 3 * 56 + 4 * 2)  # originals + 2 rows, 8 px shown at 7×


def test_interpolate_between_seeds_ends_at_their_samples(cli, tmp_path, tiny_checkpoint):
    code, _, err = cli("interpolate", "--model", tiny_checkpoint, "--seeds", "3,8", "--num", 4, "--steps", 5,
                       "--out", tmp_path / "s.png", "--gif", tmp_path / "s.gif", "--quiet")  # fmt: skip
    assert code == 0, err
    strip = np.asarray(Image.open(tmp_path / "s.png"))
    assert strip.shape == (56 + 4, 4 * 56 + 5 * 2)
    model = ddim.load(tiny_checkpoint)
    for seed, column in ((3, 0), (8, 3)):
        x = ddim.sample(model, 1, steps=5, seed=seed)
        expected = ((x[0, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        left = 2 + column * 58
        assert np.array_equal(strip[2:58:7, left : left + 56 : 7], expected)
    with Image.open(tmp_path / "s.gif") as im:
        assert im.n_frames >= 2


def test_interpolate_between_images_and_consistency_run(cli, tmp_path, tiny_checkpoint, digits):
    code, _, err = cli("interpolate", "--model", tiny_checkpoint, "--images", digits, "--indices", "2,7",
                       "--num", 3, "--steps", 4, "--out", tmp_path / "i.png", "--quiet")  # fmt: skip
    assert code == 0, err
    code, _, err = cli("consistency", "--model", tiny_checkpoint, "--n", 2, "--steps", "2,5",
                       "--reference", 20, "--out", tmp_path / "c.png", "--json", tmp_path / "c.json",
                       "--quiet")  # fmt: skip
    assert code == 0, err
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert [(r["eta"], r["steps"]) for r in rows] == [(0.0, 2), (0.0, 5), (1.0, 2), (1.0, 5)]
    assert (tmp_path / "c.png").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reconstruct", "--images", "{digits}", "--key", "x_rgb"], "holds RGB images; this model needs 1"),
        (["reconstruct", "--images", "{digits}", "--key", "nope"], "has no array 'nope'"),
        (["reconstruct", "--images", "{missing}"], "no such dataset"),
        (["reconstruct", "--steps", "0"], r"steps must be an integer in [1, 100]"),
        (["reconstruct", "--steps", ""], "at least one value"),
        (["invert", "--images", "{big}"], "do not fit in 8×8 by padding"),
        (["invert", "--steps", "101"], r"steps must be an integer in [1, 100]"),
        (["invert", "--limit", "0"], "argument --limit: must be >= 1"),
        (["sample", "--latents", "{digits}"], "has no array 'latents'"),
        (["sample", "--latents", "{wide}"], r"sample shape (1, 9, 9) does not match the model's image shape"),
        (["sample", "--latents", "{wide}", "--n", "5"], "more samples than the 2 latents"),
        (["interpolate"], "give either --seeds A,B or --images"),
        (["interpolate", "--seeds", "1,2,3"], "two non-negative integers"),
        (["interpolate", "--images", "{digits}", "--indices", "0,99"], "holds only 10 images"),
        (
            ["interpolate", "--images", "{digits}", "{digits}", "--indices", "0,1"],
            "--indices picks two images of one",
        ),
        (["consistency", "--etas", "0,2"], "argument --etas: must be in [0, 1]"),
        (["consistency", "--reference", "101"], r"steps must be an integer in [1, 100]"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(cli, tmp_path, tiny_checkpoint, digits, argv, message):
    paths = {"digits": digits, "missing": tmp_path / "missing.npz", "big": tmp_path / "big.npz",
             "wide": tmp_path / "wide.npz"}  # fmt: skip
    save_npz(paths["big"], x_test=np.zeros((2, 16, 16), np.uint8))
    save_npz(paths["wide"], latents=np.zeros((2, 1, 9, 9), np.float32))
    argv = [a.format(**paths) for a in argv]
    needs_images = argv[0] in ("reconstruct", "invert") and "--images" not in argv
    argv += ["--model", tiny_checkpoint, *(["--images", digits] if needs_images else []), "--quiet"]
    code, _, err = cli(*argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
