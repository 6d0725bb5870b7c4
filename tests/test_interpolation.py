"""Slerp keeps latents on the Gaussian shell; interpolation ends at the samples of its endpoints."""

import math

import pytest
import torch

import ddim
from ddim.toy import toy_model

D = 784  # an MNIST latent, 1×28×28


def _gaussian_pairs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g), torch.randn(n, D, generator=g)


def test_slerp_ends_at_its_endpoints_and_keeps_equal_norms_exactly():
    z0, z1 = _gaussian_pairs(1)
    z1 = z1 * z0[0].norm() / z1[0].norm()  # same norm r: the path is an arc of the sphere of radius r
    path = ddim.slerp(z0[0], z1[0], torch.linspace(0, 1, 9))  # (9, D)
    torch.testing.assert_close(path[0], z0[0])
    torch.testing.assert_close(path[-1], z1[0])
    torch.testing.assert_close(path.norm(dim=1), z0[0].norm().expand(9), rtol=1e-6, atol=0)
    assert ddim.slerp(z0[0], z1[0], 0.5).shape == (D,)


def test_slerp_keeps_gaussian_latents_on_their_shell_and_lerp_does_not():
    """‖z‖ of N(0, I_D) is √D ± 1/√2: every slerp point stays within the endpoints' norms (up to
    rounding); the linear midpoint of two independent draws has norm ≈ √(D/2)."""
    z0, z1 = _gaussian_pairs(100)
    for a, b in zip(z0, z1, strict=True):
        norms = ddim.slerp(a, b, torch.linspace(0, 1, 11)).norm(dim=1)
        lo, hi = min(a.norm(), b.norm()), max(a.norm(), b.norm())
        assert (norms >= lo * (1 - 1e-6)).all()
        assert (norms <= hi * (1 + 1e-6)).all()
    middle = torch.stack([ddim.slerp(a, b, 0.5) for a, b in zip(z0, z1, strict=True)])  # (100, D)
    assert middle.var().item() == pytest.approx(1.0, abs=0.02)  # still N(0, I) per coordinate (s.e. 0.005)
    lerp_norm = (0.5 * (z0 + z1)).norm(dim=1).mean().item()
    assert lerp_norm == pytest.approx(math.sqrt(D / 2), rel=0.02)


def test_slerp_refuses_mismatched_or_opposite_latents():
    z = torch.randn(4)
    with pytest.raises(ValueError, match="same shape"):
        ddim.slerp(z, torch.randn(5), 0.5)
    with pytest.raises(ValueError, match="opposite directions"):
        ddim.slerp(z, -z, 0.5)
    torch.testing.assert_close(ddim.slerp(z, 2 * z, 0.5), 1.5 * z)  # parallel: the straight line


def test_interpolation_ends_are_the_plain_samples_of_the_two_seeds(tiny_model):
    z0, z1 = (ddim.seeded_latents(tiny_model.image_shape, seed, [0]) for seed in (4, 9))  # (1, 1, 8, 8)
    frames = ddim.interpolate(tiny_model, z0, z1, num=5, steps=6)
    assert frames.shape == (5, 1, 8, 8)
    torch.testing.assert_close(frames[0], ddim.sample(tiny_model, 1, steps=6, seed=4)[0])
    torch.testing.assert_close(frames[-1], ddim.sample(tiny_model, 1, steps=6, seed=9)[0])
    with pytest.raises(ValueError, match="num must be an integer >= 2"):
        ddim.interpolate(tiny_model, z0, z1, num=1)


def test_consistency_holds_for_eta_zero_and_not_for_eta_one():
    """The analytic glyph mixture: with η = 0 the same x_T lands on the same glyph at every S, so
    the distance to the S = 100 image is small; with η = 1 it lands on unrelated glyphs (8 kinds)."""
    result = ddim.consistency(toy_model(size=16), n=16, steps=(10, 20), reference=100, seed=0)
    distance = {(r.eta, r.steps): r.distance for r in result.rows}
    assert distance[0.0, 20] < distance[0.0, 10]
    assert distance[0.0, 20] < 0.25 * distance[1.0, 20], distance
    assert result.images[0.0].shape == (3, 16, 1, 16, 16)
