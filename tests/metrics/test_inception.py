"""The Inception extractor as an nn.Module: the same FID as the TorchScript file's raw graph fed by an
independent resize, on real RGB images; its execution options (precision, channels-last, compile)
give the fp32 features within stated tolerances, reach the extractor, and refuse bad values."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from ddim.data import load_images, to_model_range
from ddim.metrics import extractors as ext
from ddim.metrics import feature_stats, frechet_distance, load_extractor
from helpers import CIFAR_LOSSLESS, needs_cifar, needs_inception, run_cli


def numpy_tf_resize(u: np.ndarray, size: int) -> np.ndarray:
    """TF1 resize_bilinear (align_corners=False) of (N, C, H, W) by gathering, pixel by pixel, the
    four neighbours of source position (i·H/size, j·W/size): independent of the library's matrices."""
    h, w = u.shape[-2:]

    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.arange(size) * n_in / size
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    (r0, r1, fr), (c0, c1, fc) = axis(h), axis(w)
    fr, fc = fr[:, None], fc[None, :]
    top = u[..., r0[:, None], c0[None, :]] * (1 - fc) + u[..., r0[:, None], c1[None, :]] * fc
    bottom = u[..., r1[:, None], c0[None, :]] * (1 - fc) + u[..., r1[:, None], c1[None, :]] * fc
    return top * (1 - fr) + bottom * fr


def raw_graph_features(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, 3, 32, 32) → the TorchScript file's own graph on the numpy-resized (u − 128)/128."""
    graph = ext.load_inception_graph(ext.inception_weights_path(), torch.device("cpu"))
    resized = numpy_tf_resize(images.numpy().astype(np.float64), ext.INCEPTION_SIZE)
    with torch.no_grad():
        return graph(torch.from_numpy((resized - 128) / 128).float()).double().numpy()


def fid_of(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def check_fid_equals_the_raw_graph(n: int) -> None:
    test = load_images(CIFAR_LOSSLESS, key="x_test", limit=n)  # exact CIFAR-10 pixels, uint8
    train = load_images(CIFAR_LOSSLESS, key="x_train", limit=n)
    extractor = load_extractor("inception", precision="fp32", channels_last=False)
    ours = {k: feature_stats(extractor, x) for k, x in (("test", test), ("train", train))}
    fid = frechet_distance(ours["test"].mu, ours["test"].cov, ours["train"].mu, ours["train"].cov)
    reference = fid_of(raw_graph_features(test), raw_graph_features(train))
    assert fid == pytest.approx(reference, rel=1e-4), (fid, reference)


@needs_inception
@needs_cifar
def test_preprocessing_gives_the_raw_graphs_fid_on_real_images():
    check_fid_equals_the_raw_graph(4)


@pytest.mark.slow
@needs_inception
@needs_cifar
def test_preprocessing_gives_the_raw_graphs_fid_on_200_real_images():
    check_fid_equals_the_raw_graph(200)


def test_numpy_reference_resize_is_tf_bilinear():
    """The test's own resize: 2 → 4 samples source 0, 0.5, 1, 1.5 (the last clamped to pixel 1)."""
    u = np.array([[[[0.0, 4.0], [8.0, 12.0]]]])
    out = numpy_tf_resize(u, 4)
    np.testing.assert_allclose(out[0, 0, 0], [0, 2, 4, 4])
    np.testing.assert_allclose(out[0, 0, :, 0], [0, 4, 8, 8])
    np.testing.assert_allclose(ext.tf_bilinear_resize(torch.from_numpy(u), 4).numpy(), out, atol=1e-12)


@pytest.fixture(scope="module")
def cifar_batch():
    if not CIFAR_LOSSLESS.is_file():
        pytest.skip(f"no CIFAR-10 copy at {CIFAR_LOSSLESS}")
    return to_model_range(load_images(CIFAR_LOSSLESS, key="x_test", limit=4))


@pytest.fixture(scope="module")
def fp32_features(cifar_batch):
    return load_extractor("inception", precision="fp32", channels_last=False)(cifar_batch)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@needs_inception
@pytest.mark.parametrize(
    ("options", "tolerance"),
    [
        ({"channels_last": True}, 1e-5),  # fp32 in another memory order: rounding only
        ({"precision": "bf16", "channels_last": False}, 0.08),  # measured 0.025-0.03 (max/max)
        ({"precision": "bf16", "channels_last": True}, 0.08),
    ],
)
def test_execution_options_give_the_fp32_features(cifar_batch, fp32_features, options, tolerance):
    extractor = load_extractor("inception", **{"precision": "fp32", **options})
    assert (extractor.precision, extractor.channels_last) == (
        options.get("precision", "fp32"),
        options["channels_last"],
    )
    assert relative_error(extractor(cifar_batch), fp32_features) <= tolerance


def test_a_compiled_extractor_gives_eager_features_and_compiles_one_shape(make_extractor, graphs):
    """Dynamo with the recording backend (see conftest): a short last batch is padded, not recompiled."""
    x = to_model_range(torch.randint(0, 256, (7, 1, 8, 8), generator=torch.Generator().manual_seed(0)))
    eager = replace(make_extractor(), batch_size=3)
    compiled = replace(eager, compile=True)
    torch.testing.assert_close(compiled(x), eager(x), rtol=0, atol=0)  # batches of 3, 3 and 1
    compiled(x[:2])
    assert len(graphs) == 1


@pytest.mark.slow
@needs_inception
def test_compiled_inception_gives_eager_features(cifar_batch, fp32_features, graphs):
    compiled = load_extractor("inception", precision="fp32", channels_last=False, batch_size=3, compile=True)
    assert relative_error(compiled(cifar_batch), fp32_features) <= 1e-5  # batches 3 and 1 (padded)
    assert len(graphs) == 1


def test_options_set_the_extractor_and_its_fingerprint(make_extractor):
    extractor = load_extractor("mnist", precision="bf16", channels_last=True, batch_size=7)
    assert (extractor.precision, extractor.channels_last, extractor.compile) == ("bf16", True, False)
    assert extractor.batch_size == 7
    assert extractor.fingerprint == f"{extractor.weights}+bf16"  # cached statistics never mix precisions
    assert load_extractor("mnist", precision="fp32").fingerprint == extractor.weights
    defaults = load_extractor("mnist")
    assert (defaults.precision, defaults.channels_last, defaults.compile) == ("fp32", False, False)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"precision": "fp8"}, "unknown precision 'fp8'; choose one of fp32, bf16, fp16"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ],
)
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        load_extractor("mnist", **options)


@pytest.fixture
def evaluate_args(tmp_path, tiny_checkpoint, make_extractor, monkeypatch):
    """`ddim evaluate` on the tiny checkpoint with the 'tiny' extractor; records load_extractor's options."""
    seen = []
    monkeypatch.setitem(ext.EXTRACTORS, "tiny", lambda weights, device: make_extractor("tiny"))
    real = ext.load_extractor

    def spy(name, **kwargs):
        seen.append(kwargs)
        return real(name, **kwargs)

    monkeypatch.setattr("ddim.cli.evaluate.load_extractor", spy)
    ref = tmp_path / "ref.npz"
    np.savez(ref, x_train=np.random.default_rng(0).integers(0, 256, (16, 8, 8), dtype=np.uint8))
    args = ["evaluate", "--model", tiny_checkpoint, "--ref", ref, "--features", "tiny", "--n", "4",
            "--steps", "2", "--eta", "0", "--batch-size", "4", "--kid-subset", "4", "--cache-dir",
            tmp_path / "cache", "--device", "cpu", "--quiet", "--out", tmp_path / "out"]  # fmt: skip
    return args, seen


def test_evaluate_passes_the_feature_options_and_records_the_precision(capsys, evaluate_args, tmp_path):
    args, seen = evaluate_args
    code, _, err = run_cli(capsys, *args, "--features-precision", "bf16", "--features-channels-last")
    assert code == 0, err
    assert seen[-1] == {"weights": None, "device": torch.device("cpu"), "precision": "bf16",
                        "channels_last": True, "compile": None}  # fmt: skip
    identity = json.loads((tmp_path / "out" / "results.json").read_text())["identity"]
    assert identity["extractor"] == "tiny-v1+bf16"
    run_cli(capsys, *args, "--no-features-channels-last", "--features-precision", "fp32", "--overwrite")
    assert (seen[-1]["channels_last"], seen[-1]["precision"]) == (False, "fp32")
    assert run_cli(capsys, *args, "--overwrite")[0] == 0
    assert seen[-1]["precision"] is None  # the extractor's own default


def test_evaluate_refuses_a_bad_feature_precision_in_one_line(capsys, evaluate_args):
    args, _ = evaluate_args
    code, _, err = run_cli(capsys, *args, "--features-precision", "fp8")
    assert code == 2
    assert "--features-precision: invalid choice: 'fp8'" in err
    assert len(err.strip().splitlines()) == 1
