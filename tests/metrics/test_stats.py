"""Streaming feature statistics and their cache."""

import numpy as np
import pytest
import torch

from ddim.data import to_model_range
from ddim.metrics import cached_feature_stats, feature_stats
from ddim.metrics import stats as stats_module


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_streaming_statistics_equal_the_two_pass_ones_whatever_the_batch_size(tiny_extractor, batch_size):
    x = images(103)
    stats = feature_stats(tiny_extractor, x, batch_size=batch_size)
    feats = tiny_extractor(to_model_range(x)).double().numpy()  # (103, 16)
    np.testing.assert_allclose(stats.mu, feats.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(stats.cov, np.cov(feats, rowvar=False), rtol=1e-10, atol=1e-14)
    assert stats.mu.dtype == stats.cov.dtype == np.float64
    assert stats.features.shape == (103, 16)


def test_uint8_and_model_range_images_give_the_same_statistics(tiny_extractor):
    x = images(20)
    a, b = feature_stats(tiny_extractor, x), feature_stats(tiny_extractor, to_model_range(x))
    np.testing.assert_array_equal(a.features, b.features)


def test_cache_is_reused_and_keyed_by_data_and_extractor(
    tmp_path, tiny_extractor, monkeypatch, make_extractor
):
    x = images(30)
    first, key = cached_feature_stats(tiny_extractor, x, tmp_path, label="ref")
    assert len(list(tmp_path.glob("ref-tiny-*.npz"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("statistics recomputed despite the cache")

    with monkeypatch.context() as m:
        m.setattr(stats_module, "feature_stats", fail)
        again, key_again = cached_feature_stats(tiny_extractor, x, tmp_path, label="ref")
    assert key_again == key
    np.testing.assert_array_equal(again.cov, first.cov)
    np.testing.assert_array_equal(again.features, first.features)
    _, key_other_data = cached_feature_stats(tiny_extractor, images(30, seed=1), tmp_path, label="ref")
    _, key_other_net = cached_feature_stats(make_extractor("other"), x, tmp_path, label="ref")
    assert len({key, key_other_data, key_other_net}) == 3
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_bad_input_is_refused(tiny_extractor, tmp_path):
    with pytest.raises(ValueError, match="at least 2 images"):
        feature_stats(tiny_extractor, images(1))
    with pytest.raises(ValueError, match="uint8"):
        cached_feature_stats(tiny_extractor, to_model_range(images(4)), tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "not a zip"])
def test_a_damaged_cache_entry_is_computed_again_and_replaced(tmp_path, tiny_extractor, damage):
    x = images(30)
    first, key = cached_feature_stats(tiny_extractor, x, tmp_path, label="ref")
    (entry,) = tmp_path.glob("ref-tiny-*.npz")
    entry.write_bytes(entry.read_bytes()[:300] if damage == "truncated" else b"junk")
    again, key_again = cached_feature_stats(tiny_extractor, x, tmp_path, label="ref")
    assert key_again == key
    np.testing.assert_array_equal(again.features, first.features)
    with np.load(entry) as f:  # rewritten whole
        np.testing.assert_array_equal(f["cov"], first.cov)
