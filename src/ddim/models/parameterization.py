"""What a network predicts, and the conversions between eps, x0 and v.

With x_t = √ᾱ x_0 + √(1 − ᾱ) ε (DDPM eq. 4):
  eps: the network predicts ε; x̂_0 = (x_t − √(1 − ᾱ) ε) / √ᾱ (DDIM eq. 12, "predicted x_0");
  x0:  the network predicts x_0 directly;
  v:   the network predicts v = √ᾱ ε − √(1 − ᾱ) x_0 (Salimans & Ho 2022, §4), so that
       x_0 = √ᾱ x_t − √(1 − ᾱ) v and ε = √(1 − ᾱ) x_t + √ᾱ v.
The networks know none of this: samplers call `to_x0_eps` on their raw output.
ᾱ may be a float or a tensor that broadcasts against x_t.
"""

from __future__ import annotations

from typing import Literal, get_args

from torch import Tensor

Prediction = Literal["eps", "x0", "v"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)


def check_prediction(prediction: str) -> Prediction:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    return prediction  # type: ignore[return-value]


def x0_from_eps(x_t: Tensor, eps: Tensor, alpha_bar: float | Tensor) -> Tensor:
    return (x_t - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5


def eps_from_x0(x_t: Tensor, x0: Tensor, alpha_bar: float | Tensor) -> Tensor:
    return (x_t - alpha_bar**0.5 * x0) / (1 - alpha_bar) ** 0.5


def v_from_x0_eps(x0: Tensor, eps: Tensor, alpha_bar: float | Tensor) -> Tensor:
    return alpha_bar**0.5 * eps - (1 - alpha_bar) ** 0.5 * x0


def to_x0_eps(
    output: Tensor, x_t: Tensor, alpha_bar: float | Tensor, prediction: Prediction
) -> tuple[Tensor, Tensor]:
    """(x̂_0, ε̂) from a network output of the given prediction type, at noise level ᾱ < 1."""
    if prediction == "eps":
        return x0_from_eps(x_t, output, alpha_bar), output
    if prediction == "x0":
        return output, eps_from_x0(x_t, output, alpha_bar)
    if prediction == "v":
        a, s = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
        return a * x_t - s * output, s * x_t + a * output
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def from_x0_eps(x0: Tensor, eps: Tensor, alpha_bar: float | Tensor, prediction: Prediction) -> Tensor:
    """The output a network of the given prediction type should give (inverse of to_x0_eps)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return v_from_x0_eps(x0, eps, alpha_bar)
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
