import pytest
import torch

from ddim.models.parameterization import PREDICTIONS, from_x0_eps, to_x0_eps, x0_from_eps


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("alpha_bar", [0.9999, 0.5, 1e-4])
def test_to_x0_eps_inverts_from_x0_eps(prediction, alpha_bar):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    x_t = alpha_bar**0.5 * x0 + (1 - alpha_bar) ** 0.5 * eps  # DDPM eq. 4
    out = from_x0_eps(x0, eps, alpha_bar, prediction)
    x0_hat, eps_hat = to_x0_eps(out, x_t, alpha_bar, prediction)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-9)


def test_v_is_the_rotation_of_salimans_and_ho():
    # with ᾱ = cos²φ: x_t = cos φ x0 + sin φ ε and v = cos φ ε − sin φ x0 (Salimans & Ho 2022, §4)
    phi = torch.tensor(0.7, dtype=torch.float64)
    x0, eps = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 3.0], dtype=torch.float64)
    v = from_x0_eps(x0, eps, phi.cos() ** 2, "v")
    torch.testing.assert_close(v, phi.cos() * eps - phi.sin() * x0)


def test_x0_from_eps_is_eq_12():
    x_t, eps, a = torch.tensor([2.0]), torch.tensor([1.0]), 0.64
    assert x0_from_eps(x_t, eps, a).item() == pytest.approx((2.0 - 0.6 * 1.0) / 0.8)


def test_unknown_prediction_is_refused():
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        to_x0_eps(torch.zeros(1), torch.zeros(1), 0.5, "score")
