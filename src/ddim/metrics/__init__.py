"""Evaluation metrics: feature extractors, feature statistics, the Fréchet distance (FID) and KID.

from ddim.metrics import feature_stats, frechet_distance, load_extractor
ext = load_extractor("mnist")                          # images in [-1, 1] (N, 1, 28, 28) → (N, 128)
a, b = feature_stats(ext, x_real), feature_stats(ext, x_fake)
fid = frechet_distance(a.mu, a.cov, b.mu, b.cov)
"""

from ddim.metrics.distance import frechet_distance, kid
from ddim.metrics.extractors import EXTRACTORS, Extractor, load_extractor
from ddim.metrics.stats import FeatureStats, cached_feature_stats, feature_stats

__all__ = [
    "EXTRACTORS",
    "Extractor",
    "FeatureStats",
    "cached_feature_stats",
    "feature_stats",
    "frechet_distance",
    "kid",
    "load_extractor",
]
