"""Distances between feature distributions: the Fréchet distance (FID) and the kernel
inception distance (KID).

FID (Heusel et al. 2017): d² = ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁Σ₂)^½, the 2-Wasserstein
distance between the Gaussians fitted to the two feature sets.
KID (Bińkowski et al. 2018): the unbiased estimate of the squared MMD with the cubic kernel
k(x, y) = (xᵀy / d + 1)³, averaged over random subsets; std is over the subsets.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance matrix (D, D); round-off negative eigenvalues → 0."""
    lam, v = np.linalg.eigh(cov)
    return (v * np.sqrt(np.clip(lam, 0.0, None))) @ v.T


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """Tr (Σ₁Σ₂)^½ for symmetric PSD Σ₁, Σ₂.

    Σ₁Σ₂ is similar to the symmetric PSD matrix M = Σ₁^½ Σ₂ Σ₁^½ (same eigenvalues λᵢ ≥ 0), so the
    trace is Σᵢ √λᵢ(M). This is the quantity the standard implementations get from
    scipy.linalg.sqrtm(Σ₁Σ₂) before dropping its round-off imaginary part; computed this way it
    is real by construction, and eigenvalues made slightly negative by round-off count as 0.
    """
    root1 = _psd_sqrt(cov1)
    m = root1 @ cov2 @ root1
    lam = np.linalg.eigvalsh((m + m.T) / 2)  # symmetrise away round-off before eigvalsh
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum())


def _as_stats(mu: ArrayLike, cov: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    if mu.ndim != 1 or cov.shape != (len(mu), len(mu)):
        raise ValueError(f"{name}: need a mean (D,) and a covariance (D, D), got {mu.shape} and {cov.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(cov).all()):
        raise ValueError(f"{name}: the statistics hold NaN or infinite values")
    return mu, cov


def frechet_distance(mu1: ArrayLike, cov1: ArrayLike, mu2: ArrayLike, cov2: ArrayLike) -> float:
    """The Fréchet distance d² = ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁Σ₂)^½ (what "FID" reports).

    Means (D,) and covariances (D, D), as arrays or tensors; computed in float64.
    """
    mu1, cov1 = _as_stats(mu1, cov1, "first statistics")
    mu2, cov2 = _as_stats(mu2, cov2, "second statistics")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    diff = mu1 - mu2
    d2 = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt_product(cov1, cov2)
    return max(float(d2), 0.0)  # ≥ 0 in exact arithmetic; round-off can leave -1e-12


def _cubic_kernel(a: Tensor, b: Tensor) -> Tensor:
    """k(x, y) = (xᵀy / d + 1)³ for every pair: (..., m, d) × (..., m', d) → (..., m, m')."""
    return (a @ b.transpose(-1, -2) / a.shape[-1] + 1.0) ** 3


def mmd2_unbiased(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD² between the sets x (..., m, d) and y (..., m, d), one value per leading index.

    MMD²_u = Σ_{i≠j} k(xᵢ,xⱼ)/(m(m−1)) + Σ_{i≠j} k(yᵢ,yⱼ)/(m(m−1)) − 2 Σ_{i,j} k(xᵢ,yⱼ)/m²
    (the diagonal terms k(xᵢ,xᵢ) are what make the plain V-statistic biased upwards).
    """
    m = x.shape[-2]
    k_xx, k_yy, k_xy = _cubic_kernel(x, x), _cubic_kernel(y, y), _cubic_kernel(x, y)
    off_diag = (k_xx.sum((-1, -2)) - k_xx.diagonal(dim1=-2, dim2=-1).sum(-1)) + (
        k_yy.sum((-1, -2)) - k_yy.diagonal(dim1=-2, dim2=-1).sum(-1)
    )
    return off_diag / (m * (m - 1)) - 2.0 * k_xy.sum((-1, -2)) / m**2


def kid(
    feats1: ArrayLike,
    feats2: ArrayLike,
    *,
    subset_size: int = 1000,
    num_subsets: int = 100,
    seed: int = 0,
) -> tuple[float, float]:
    """KID between features (N₁, D) and (N₂, D): (mean, std) of the unbiased MMD² over
    `num_subsets` random subsets of min(subset_size, N₁, N₂) rows drawn from each set
    (without replacement inside a subset), computed in float64."""
    f1 = torch.as_tensor(np.asarray(feats1), dtype=torch.float64)
    f2 = torch.as_tensor(np.asarray(feats2), dtype=torch.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        shapes = f"{tuple(f1.shape)} and {tuple(f2.shape)}"
        raise ValueError(f"features must be (N, D) with the same D, got {shapes}")
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError(f"KID needs at least 2 features in each set, got {len(f1)} and {len(f2)}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    gen = torch.Generator().manual_seed(seed)
    subsets = [
        (torch.randperm(len(f1), generator=gen)[:m], torch.randperm(len(f2), generator=gen)[:m])
        for _ in range(num_subsets)
    ]
    values = torch.stack([mmd2_unbiased(f1[i], f2[j]) for i, j in subsets])
    std = float(values.std(unbiased=False)) if num_subsets > 1 else 0.0
    return float(values.mean()), std
