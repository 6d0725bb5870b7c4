"""Bad input through the `ddim` command: one line naming the offending thing and exit 2, never a
traceback, and nothing written earlier lost."""

import errno
import itertools
import os
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import ddim
from ddim.io import save_npz
from helpers import run_cli

# the options each command needs to get as far as the one under test, and no further (cheaply)
REQUIRED = {
    "sample": ["--model", "toy", "--dry-run"],
    "invert": ["--model", "toy", "--images", "missing.npz"],
    "train": ["--out", "run", "--dry-run"],
    "evaluate": ["--model", "toy", "--ref", "missing.npz"],
    "serve": ["--model", "missing.safetensors"],
}


@pytest.fixture
def cond_checkpoint(tmp_path, make_tiny_model):
    return ddim.save(make_tiny_model(num_classes=3), tmp_path / "cond.safetensors")


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


@pytest.fixture
def npz_files(tmp_path):
    """Damaged and ill-typed .npz files, by name."""
    lat = np.zeros((1, 1, 8, 8), np.float32)
    good = save_npz(tmp_path / "good.npz", x=np.zeros((2, 8, 8), np.uint8), latents=lat)
    crc = bytearray(good.read_bytes())
    for member in (b"x.npy", b"latents.npy"):  # a byte of each array's data: the zip's CRCs no longer fit
        crc[crc.index(member) + 150] ^= 0xFF
    files = {
        "truncated": good.read_bytes()[:200],
        "npy": None,  # an .npy file named .npz
        "text": b"hello",
        "crc": bytes(crc),
    }
    for name, content in files.items():
        if content is not None:
            (tmp_path / f"{name}.npz").write_bytes(content)
    with open(tmp_path / "npy.npz", "wb") as f:
        np.save(f, np.zeros((2, 8, 8), np.uint8))
    save_npz(tmp_path / "scalar.npz", x=np.uint8(3), latents=np.float32(1))
    save_npz(tmp_path / "int_latents.npz", latents=np.ones((1, 1, 8, 8), np.int64))
    save_npz(tmp_path / "float_timesteps.npz", latents=lat, timesteps=np.array([50.7, 0.2]))
    save_npz(tmp_path / "huge_latents.npz", latents=np.full((1, 1, 8, 8), 1e300))  # inf in float32
    return tmp_path


NPZ_READERS = {  # command and options reading the .npz {} (array x, or latents)
    "invert": ["invert", "--images", "{}", "--key", "x", "--steps", "2", "--out", "o.npz"],
    "reconstruct": ["reconstruct", "--images", "{}", "--key", "x", "--steps", "2"],
    "interpolate": ["interpolate", "--images", "{}", "--key", "x", "--steps", "2"],
    "edit": ["edit", "--images", "{}", "--key", "x", "--to-class", "0", "--steps", "2"],
    "train": ["train", "--data", "{}", "--set", "data_key=x", "--out", "run"],
    "sample": ["sample", "--latents", "{}", "--steps", "2"],
}


@pytest.mark.parametrize("command", sorted(NPZ_READERS))
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("truncated", "is not a readable .npz file (not a zip archive"),
        ("npy", "is not a readable .npz file (not a zip archive"),
        ("text", "is not a readable .npz file (not a zip archive"),
        ("crc", "is not a readable .npz file: Bad CRC-32"),
        ("scalar", "got shape ()"),
    ],
)
def test_a_damaged_npz_is_named_in_one_line(
    capsys, npz_files, tiny_checkpoint, cond_checkpoint, command, name, message
):
    path = npz_files / f"{name}.npz"
    argv = [a.format(path) for a in NPZ_READERS[command]]
    model = {"train": [], "edit": ["--model", cond_checkpoint]}.get(command, ["--model", tiny_checkpoint])
    code, _, err = run_cli(capsys, *argv, *model, "--quiet")
    assert_refused(code, err, path, message)


@pytest.mark.filterwarnings("error")  # numpy's overflow warning would be a second line of output
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("int_latents", "latents must be floating-point numbers, got dtype int64"),
        ("float_timesteps", "timesteps must be integers, got dtype float64"),
        ("huge_latents", "latents must be finite"),
    ],
)
def test_latents_of_the_wrong_type_are_refused(capsys, npz_files, tiny_checkpoint, name, message):
    path = npz_files / f"{name}.npz"
    code, _, err = run_cli(capsys, "sample", "--model", tiny_checkpoint, "--latents", path, "--quiet")
    assert_refused(code, err, path, message)


# commands that go as far as writing, cheaply; {ckpt}: a tiny model, {cond}: a class-conditional one
QUICK = ["--steps", "2", "--quiet"]
WRITERS = {
    "sample": ["sample", "--model", "{ckpt}", "--n", "1", *QUICK],
    "invert": ["invert", "--model", "{ckpt}", "--images", "{images}", *QUICK],
    "reconstruct": ["reconstruct", "--model", "{ckpt}", "--images", "{images}", *QUICK],
    "interpolate": ["interpolate", "--model", "{ckpt}", "--seeds", "0,1", "--num", "2", *QUICK],
    "consistency": ["consistency", "--model", "{ckpt}", "--n", "1", "--reference", "3", *QUICK],
    "edit": ["edit", "--model", "{cond}", "--images", "{images}", "--to-class", "0", *QUICK],
    "train": ["train", "--data", "{images}", "--dry-run"],
    "evaluate": ["evaluate", "--model", "{ckpt}", "--ref", "{images}", "--dry-run"],
    "convert": ["convert", "missing.ckpt"],
}
OUTPUTS = [  # (command, option, whether it names a folder)
    ("sample", "--out", False), ("sample", "--npz", False), ("sample", "--trajectory", False),
    ("sample", "--out-dir", True), ("invert", "--out", False), ("reconstruct", "--out", False),
    ("reconstruct", "--csv", False), ("reconstruct", "--json", False), ("interpolate", "--out", False),
    ("interpolate", "--gif", False), ("consistency", "--out", False), ("consistency", "--json", False),
    ("edit", "--out", False), ("edit", "--npz", False), ("edit", "--compare", False),
    ("edit", "--out-dir", True), ("train", "--out", True), ("evaluate", "--out", True),
    ("evaluate", "--cache-dir", True), ("convert", "--out", False),
]  # fmt: skip


@pytest.fixture
def writer(capsys, tmp_path, tiny_checkpoint, cond_checkpoint):
    """`writer(command, *more)`: run a WRITERS command with more options → (exit code, stderr)."""
    images = save_npz(tmp_path / "images.npz", x_test=np.zeros((2, 8, 8), np.uint8))
    places = {"ckpt": tiny_checkpoint, "cond": cond_checkpoint, "images": images}

    def run(command, *more):
        code, _, err = run_cli(capsys, *[a.format(**places) for a in WRITERS[command]], *more)
        return code, err

    return run


@pytest.mark.parametrize(("command", "option", "folder"), OUTPUTS)
def test_an_output_of_the_wrong_kind_is_refused_before_any_work(writer, tmp_path, command, option, folder):
    wrong = tmp_path / "a-file.txt" if folder else tmp_path / "a-folder"
    wrong.write_text("kept") if folder else wrong.mkdir()
    code, err = writer(command, option, wrong)
    kinds = "it is a file, not a folder" if folder else "it is a folder, not a file"
    assert_refused(code, err, f"argument {option}: cannot write {wrong}: {kinds}")
    assert wrong.read_text() == "kept" if folder else not any(wrong.iterdir())


@pytest.mark.parametrize(("command", "option", "folder"), OUTPUTS)
def test_an_output_under_a_file_is_refused_before_any_work(writer, tmp_path, command, option, folder):
    (tmp_path / "notes.txt").write_text("kept")
    code, err = writer(command, option, tmp_path / "notes.txt" / "x")
    assert_refused(code, err, f"argument {option}: cannot write", f"{tmp_path / 'notes.txt'} is a file")
    assert (tmp_path / "notes.txt").read_text() == "kept"


@pytest.mark.parametrize(("command", "option", "folder"), OUTPUTS)
def test_an_output_name_too_long_is_refused_before_any_work(writer, tmp_path, command, option, folder):
    code, err = writer(command, option, tmp_path / ("x" * 300))
    assert_refused(code, err, f"argument {option}: cannot write {tmp_path / ('x' * 300)}: File name too long")


SAME_COMMAND_PAIRS = [
    (command, first, second)
    for (command, first, _), (other, second, _) in itertools.combinations(OUTPUTS, 2)
    if command == other
]


@pytest.mark.parametrize(("command", "first", "second"), SAME_COMMAND_PAIRS)
def test_two_outputs_naming_one_path_are_refused_before_any_work(writer, tmp_path, command, first, second):
    code, err = writer(command, first, tmp_path / "out", second, tmp_path / "." / "out")
    assert_refused(code, err, first, second, "name the same path")
    assert not (tmp_path / "out").exists()


def test_an_output_naming_the_path_of_a_default_one_is_refused(writer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = writer("interpolate", "--gif", "interpolation.png")  # --out defaults to interpolation.png
    assert_refused(code, err, "--out and --gif name the same path")
    assert not any(tmp_path.glob("interpolation*"))


@pytest.mark.parametrize(
    ("command", "first", "second"),
    [
        ("sample", "--out", "--npz"), ("sample", "--out", "--trajectory"),
        ("edit", "--out", "--compare"), ("reconstruct", "--csv", "--json"),
        ("interpolate", "--out", "--gif"), ("consistency", "--out", "--json"),
    ],
)  # fmt: skip
def test_a_bad_second_output_leaves_the_first_untouched(writer, tmp_path, command, first, second):
    earlier = tmp_path / "earlier-results"
    earlier.write_bytes(b"earlier results")
    (tmp_path / "a-folder").mkdir()
    code, err = writer(command, first, earlier, second, tmp_path / "a-folder")
    assert_refused(code, err, second)
    assert earlier.read_bytes() == b"earlier results"


@pytest.mark.parametrize(
    ("command", "first", "second"),
    [("sample", "--out", "--npz"), ("sample", "--npz", "--trajectory"), ("edit", "--compare", "--npz")],
)
def test_an_output_that_fails_to_write_takes_the_others_with_it(
    writer, tmp_path, monkeypatch, command, first, second
):
    """The disk fills up while the second output is written: the first is not left behind alone."""
    save = Image.Image.save

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if second == "--npz":
        monkeypatch.setattr(np, "savez", full_disk)
    else:  # --trajectory, a GIF
        gif = lambda *a, **k: (full_disk if k.get("format") == "GIF" else save)(*a, **k)  # noqa: E731
        monkeypatch.setattr(Image.Image, "save", gif)
    code, err = writer(command, first, tmp_path / "first", second, tmp_path / "second")
    assert_refused(code, err, f"cannot write {tmp_path / 'second'}: No space left on device")
    assert not [p for p in tmp_path.iterdir() if "first" in p.name or "second" in p.name]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("lr=inf", "lr must be a finite number, got inf"),
        ("grad_clip=nan", "grad_clip must be a finite number, got nan"),
        ("weight_decay=-inf", "weight_decay must be a finite number, got -inf"),
        ("lr='fast'", "lr must be a finite number, got 'fast'"),
        ("hflip='yes'", "hflip must be true or false, got 'yes'"),
        ("data=3", "data must be a string, got 3"),
        ("net.attn_resolutions=16", "invalid training setting: 'int' object is not iterable"),
    ],
)
def test_train_settings_of_the_wrong_type_are_refused(capsys, setting, message):
    code, _, err = run_cli(capsys, "train", "--data", "x.npz", "--out", "run", "--set", setting, "--dry-run")
    assert_refused(code, err, message)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("list.json", b"[1, 2]", "must hold a table of settings, got a JSON list"),
        ("image.toml", b"\x89PNG\r\n\x1a\n\x00", "is not valid TOML: not UTF-8 text"),
    ],
)
def test_a_config_file_that_is_not_settings_is_named(capsys, tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    code, _, err = run_cli(capsys, "train", "--data", "x.npz", "--out", tmp_path / "run",
                           "--config", tmp_path / name, "--dry-run")  # fmt: skip
    assert_refused(code, err, tmp_path / name, message)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("foreign", "weights do not match the architecture"),
        ("truncated", "is not a readable safetensors file (corrupt or truncated?)"),
    ],
)
def test_foreign_or_damaged_classifier_weights_are_named(capsys, tmp_path, tiny_checkpoint, damage, message):
    weights = tmp_path / "classifier.safetensors"
    data = tiny_checkpoint.read_bytes()
    weights.write_bytes(data if damage == "foreign" else data[: len(data) // 2])
    code, _, err = run_cli(capsys, "evaluate", "--model", "toy", "--ref", "x.npz", "--features", "mnist",
                           "--features-weights", weights, "--out", tmp_path / "eval")  # fmt: skip
    assert_refused(code, err, weights, message)


def test_convert_names_what_a_file_of_no_known_format_is(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    code, _, err = run_cli(capsys, "convert", tmp_path / "notes.txt", "--out", tmp_path / "x.safetensors")
    assert_refused(code, err, tmp_path / "notes.txt", "is not a readable safetensors file")
    assert "already a native ddim checkpoint" not in err


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("missing.ckpt", "no such file or folder: missing.ckpt"),
        ("toy", "toy is a built-in model, in ddim's format already: use it by name"),
        ("plain.pkl", "plain.pkl is not a PyTorch checkpoint: a pickle that torch.save did not write"),
    ],
)
def test_convert_names_a_source_it_cannot_read(capsys, tmp_path, monkeypatch, source, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"conv_in.weight": [1, 2]}, protocol=4))
    code, _, err = run_cli(capsys, "convert", source, "--out", "x.safetensors")
    assert_refused(code, err, f"ddim convert: error: {message}")  # one line: no torch warning before it
    assert not (tmp_path / "x.safetensors").exists()


def _unreadable(path):
    """Make `path` unreadable, or skip where this user reads it anyway (root)."""
    path.chmod(0)
    if os.access(path, os.R_OK):
        path.chmod(0o755)
        pytest.skip("this user reads files without read permission (root)")


@pytest.mark.parametrize("what", ["checkpoint", "npz", "folder"])
def test_an_input_without_read_permission_says_so(capsys, tmp_path, tiny_checkpoint, what):
    path = {"checkpoint": tiny_checkpoint, "npz": tmp_path / "x.npz", "folder": tmp_path / "images"}[what]
    save_npz(tmp_path / "x.npz", x_test=np.zeros((2, 8, 8), np.uint8))
    (tmp_path / "images").mkdir()
    _unreadable(path)
    try:
        model = tiny_checkpoint if what != "checkpoint" else path
        images = path if what != "checkpoint" else tmp_path / "x.npz"
        code, _, err = run_cli(capsys, "invert", "--model", model, "--images", images, "--out",
                               tmp_path / "l.npz", "--quiet")  # fmt: skip
    finally:
        path.chmod(0o755)
    assert_refused(code, err, f"cannot read {path}: ", "ermission denied")


def _png_header(path, side: int) -> None:
    """A PNG whose header says side × side (1-bit grey) and whose data is cut short."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")))


@pytest.mark.filterwarnings("error")  # Pillow's warning would be more lines of output
@pytest.mark.parametrize("side", [12_000, 20_000])  # past Pillow's warning and its error limits
def test_an_image_past_pillows_pixel_limits_is_refused_in_one_line(capsys, tmp_path, tiny_checkpoint, side):
    _png_header(tmp_path / "huge.png", side)
    code, _, err = run_cli(capsys, "invert", "--model", tiny_checkpoint, "--images", tmp_path / "huge.png",
                           "--out", tmp_path / "l.npz", "--quiet")  # fmt: skip
    assert_refused(code, err, f"{tmp_path / 'huge.png'}: cannot read this image", "exceeds limit")


def test_class_dropout_without_a_conditional_run_is_refused(capsys):
    code, _, err = run_cli(capsys, "train", *REQUIRED["train"], "--data", "x.npz", "--class-dropout", "0.3")
    assert_refused(code, err, "--class-dropout applies to conditional runs only")
    code, out, err = run_cli(capsys, "train", *REQUIRED["train"], "--data", "x.npz", "--class-dropout", "0.3",
                             "--conditional")  # fmt: skip
    assert code == 0, err
    assert '"class_dropout": 0.3' in out


def test_library_errors_name_parameters_and_the_cli_says_flags(tmp_path, capsys):
    """runs.py's refusal names `resume=True` for a Python caller; `ddim train` says --resume."""
    from ddim.runs import RunFolder

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text("")
    with pytest.raises(ValueError, match=r"continue it with resume=True or choose another run folder"):
        RunFolder(tmp_path / "run").check_new()
    np.savez(tmp_path / "x.npz", x_train=np.zeros((64, 8, 8), np.uint8))
    code, _, err = run_cli(
        capsys, "train", "--data", tmp_path / "x.npz", "--out", tmp_path / "run", "--steps", 2
    )
    assert code == 2
    assert "continue it with --resume or choose another --out" in err
