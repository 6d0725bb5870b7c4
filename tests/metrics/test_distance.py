"""Fréchet distance and KID against closed forms and an independent implementation."""

import numpy as np
import pytest
import torch

from ddim.metrics import frechet_distance, kid
from ddim.metrics.distance import _cubic_kernel, mmd2_unbiased


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def test_frechet_equals_the_closed_form_for_co_diagonalisable_gaussians():
    """Σ₁ = Q diag(a) Qᵀ, Σ₂ = Q diag(b) Qᵀ (full, non-diagonal matrices):
    d² = ‖μ₁ − μ₂‖² + Σᵢ (√aᵢ − √bᵢ)²."""
    rng = np.random.default_rng(0)
    d = 16
    q = random_rotation(d, rng)
    a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_of_scalar_gaussians():
    """1-d: W₂² between N(m₁, s₁²) and N(m₂, s₂²) is (m₁ − m₂)² + (s₁ − s₂)²."""
    got = frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]])
    assert got == pytest.approx(3.0**2 + (2.0 - 3.0) ** 2, rel=1e-12)


def scipy_fid(mu1, cov1, mu2, cov2) -> float:
    """The pytorch-fid recipe: scipy's sqrtm of Σ₁Σ₂, real part."""
    linalg = pytest.importorskip("scipy.linalg")
    covmean = linalg.sqrtm(cov1 @ cov2)
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("d", [8, 64])
def test_frechet_matches_scipy_sqrtm_on_random_features(d):
    rng = np.random.default_rng(d)
    x = rng.standard_normal((500, d)) @ rng.standard_normal((d, d))  # correlated features
    y = rng.standard_normal((400, d)) @ rng.standard_normal((d, d)) + 0.3
    stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in (x, y)]
    got = frechet_distance(*stats[0], *stats[1])
    assert got == pytest.approx(scipy_fid(*stats[0], *stats[1]), rel=1e-6)


def test_frechet_is_zero_for_identical_statistics_and_symmetric():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 32))
    y = rng.standard_normal((300, 32)) * 1.5
    mx, cx = x.mean(0), np.cov(x, rowvar=False)
    my, cy = y.mean(0), np.cov(y, rowvar=False)
    assert frechet_distance(mx, cx, mx, cx) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mx, cx, my, cy) > 1.0
    assert frechet_distance(mx, cx, my, cy) == pytest.approx(frechet_distance(my, cy, mx, cx), rel=1e-9)


def test_frechet_handles_rank_deficient_covariances():
    """Fewer samples than dimensions: Σ is singular; the distance stays finite and equals scipy's."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((20, 50)), rng.standard_normal((20, 50)) + 0.1
    s1, s2 = (x.mean(0), np.cov(x, rowvar=False)), (y.mean(0), np.cov(y, rowvar=False))
    got = frechet_distance(*s1, *s2)
    assert np.isfinite(got)
    assert got == pytest.approx(scipy_fid(*s1, *s2), rel=1e-4)


def test_frechet_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"\(D, D\)"):
        frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2))


def test_kid_of_a_set_with_itself_is_about_zero():
    """Subsets of one set of N features overlap: a pair (xᵢ, yⱼ) is the same point with
    probability 1/N, so E KID = −(2/N)(mean k(f, f) − mean_{i≠j} k(fᵢ, fⱼ)), O(1/N) — and exact
    when the subset is the whole set."""
    feats = np.random.default_rng(3).standard_normal((600, 16))
    k = (feats @ feats.T / 16 + 1) ** 3
    diag, off = np.diag(k).mean(), (k.sum() - np.trace(k)) / (600 * 599)
    expected = -2 / 600 * (diag - off)
    whole, _ = kid(feats, feats, subset_size=600, num_subsets=1)
    assert whole == pytest.approx(expected, rel=1e-9)
    mean, std = kid(feats, feats, subset_size=200, num_subsets=400)
    assert abs(mean - expected) < 4 * std / np.sqrt(400)
    shifted, _ = kid(feats, feats + 0.5, subset_size=200, num_subsets=50)
    assert abs(mean) < 0.1 * shifted  # well below a shift of half a standard deviation


def exact_mmd2_1d(mu_x: float, mu_y: float) -> float:
    """MMD² between N(μx, 1) and N(μy, 1) for k(x, y) = (xy + 1)³ = ⟨φ(x), φ(y)⟩ with
    φ(x) = (x³, √3 x², √3 x, 1): ‖E φ(X) − E φ(Y)‖², with E X = μ, E X² = μ² + 1, E X³ = μ³ + 3μ."""
    m1, m2, m3 = mu_x - mu_y, (mu_x**2 + 1) - (mu_y**2 + 1), (mu_x**3 + 3 * mu_x) - (mu_y**3 + 3 * mu_y)
    return m3**2 + 3 * m2**2 + 3 * m1**2


@pytest.mark.parametrize("mu_y", [0.0, 0.5])
def test_kid_estimator_is_unbiased(mu_y):
    """The mean of many estimates from tiny sets (m = 5, where the biased V-statistic would be
    off by ~E k(x,x)/m) equals the exact MMD² within 4 standard errors."""
    gen = torch.Generator().manual_seed(4)
    trials, m = 20_000, 5
    x = torch.randn(trials, m, 1, generator=gen, dtype=torch.float64)
    y = torch.randn(trials, m, 1, generator=gen, dtype=torch.float64) + mu_y
    estimates = mmd2_unbiased(x, y)
    # the biased V-statistic (diagonal terms kept) on the same sets, to show the test can tell them apart
    biased = sum(_cubic_kernel(a, b).mean((-1, -2)) * w for a, b, w in [(x, x, 1), (y, y, 1), (x, y, -2)])
    se = estimates.std() / trials**0.5
    truth = exact_mmd2_1d(0.0, mu_y)
    assert abs(float(estimates.mean()) - truth) < 4 * float(se)
    assert abs(float(biased.mean()) - truth) > 4 * float(se)


def test_kid_agrees_with_the_subset_estimator_and_checks_inputs():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((50, 4)), rng.standard_normal((50, 4))
    mean, std = kid(x, y, subset_size=50, num_subsets=3)  # every subset is the whole set
    expected = float(mmd2_unbiased(torch.from_numpy(x), torch.from_numpy(y)))
    assert mean == pytest.approx(expected, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="same D"):
        kid(x, y[:, :3])
    with pytest.raises(ValueError, match="at least 2"):
        kid(x[:1], y)
