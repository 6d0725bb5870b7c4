"""Feature statistics (μ, Σ in float64) computed in streaming batches, and their `.npz` cache.

Batches are merged with Chan et al.'s pairwise update, so the result does not depend on the
batch size and never forms Σ xxᵀ − n μμᵀ (which cancels catastrophically in float64 for
large n). The features themselves are kept as float32 for KID.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddim import distributed
from ddim.data import DataError, read_npz, to_model_range
from ddim.io import save_npz
from ddim.metrics.extractors import Extractor

CACHE_VERSION = 1


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """The mean μ (D,) and covariance Σ (D, D) (float64, Σ with the n − 1 denominator) of a
    feature set, and the features (n, D) float32 themselves."""

    mu: np.ndarray
    cov: np.ndarray
    features: np.ndarray

    @property
    def n(self) -> int:
        return len(self.features)


def _merge(
    n: int, mu: np.ndarray, scatter: np.ndarray, batch: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray]:
    """Add a batch (B, D) to (n, μ, M = Σᵢ (xᵢ − μ)(xᵢ − μ)ᵀ): Chan et al. (1979)'s parallel update."""
    nb = len(batch)
    mu_b = batch.mean(0)
    centred = batch - mu_b
    delta = mu_b - mu
    total = n + nb
    scatter = scatter + centred.T @ centred + np.outer(delta, delta) * (n * nb / total)
    return total, mu + delta * (nb / total), scatter


def feature_stats(
    extractor: Extractor,
    images: Tensor,
    *,
    batch_size: int = 250,
    progress: bool = False,
    sharded: bool = False,
) -> FeatureStats:
    """Statistics of `extractor`'s features of images (N, C, H, W): uint8, or float in [-1, 1].

    Under torchrun the ranks share the work: each extracts the features of its contiguous part
    of `images` (or, with sharded=True, `images` already is this rank's part, in rank order),
    and every rank gets the statistics of all of them, equal to a one-process computation.
    """
    if images.ndim != 4 or (len(images) < 2 and not sharded):
        raise ValueError(f"need at least 2 images (N, C, H, W), got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shard = distributed.shard(len(images))
    part = images if sharded else images[shard.start : shard.stop]
    chunks = [torch.empty(0, extractor.dim)]
    bar = tqdm(range(0, len(part), batch_size), disable=not progress, desc=f"{extractor.name} features")
    for i in bar:
        batch = part[i : i + batch_size]
        chunks.append(
            extractor(to_model_range(batch) if batch.dtype == torch.uint8 else batch).cpu()
        )  # (B, D)
    features = distributed.all_gather_cat(torch.cat(chunks)).numpy()  # (N, D), every rank's, in order
    if len(features) < 2:
        raise ValueError(f"need at least 2 images, got {len(features)}")
    n, mu = 0, np.zeros(extractor.dim)
    scatter = np.zeros((extractor.dim, extractor.dim))
    for i in range(0, len(features), batch_size):
        n, mu, scatter = _merge(n, mu, scatter, features[i : i + batch_size].astype(np.float64))
    return FeatureStats(mu, scatter / (n - 1), features)


def stats_key(images: Tensor, extractor: Extractor) -> str:
    """sha1 of the images (their bytes and shape) and of the extractor's name and weights."""
    digest = hashlib.sha1(f"v{CACHE_VERSION} {extractor.name} {extractor.fingerprint}".encode())
    digest.update(str(tuple(images.shape)).encode())
    digest.update(images.contiguous().numpy().tobytes())
    return digest.hexdigest()


def cached_feature_stats(
    extractor: Extractor,
    images: Tensor,
    cache_dir: str | os.PathLike | None,
    *,
    label: str = "data",
    batch_size: int = 250,
    progress: bool = False,
) -> tuple[FeatureStats, str]:
    """`feature_stats` of uint8 images, read from or written to `cache_dir/<label>-<extractor>-<key>.npz`
    (no cache if `cache_dir` is None). Returns the statistics and their key."""
    if images.dtype != torch.uint8:
        raise ValueError(f"cached statistics are for uint8 data, got dtype {images.dtype}")
    key = stats_key(images, extractor)
    path = None if cache_dir is None else Path(cache_dir) / f"{label}-{extractor.name}-{key[:16]}.npz"
    if path is not None and path.is_file():
        with contextlib.suppress(DataError):  # a damaged entry is computed again and replaced
            f = read_npz(path, ["key", "mu", "cov", "features"])
            if str(f["key"]) == key:
                return FeatureStats(f["mu"], f["cov"], f["features"]), key
    stats = feature_stats(extractor, images, batch_size=batch_size, progress=progress)
    if path is not None and distributed.is_main():
        save_npz(path, mu=stats.mu, cov=stats.cov, features=stats.features, key=np.array(key))
    return stats, key
