"""An analytic denoiser: data from a mixture of isotropic Gaussians, with the exact E[ε | x_t].

For x_0 ~ Σ_k w_k N(μ_k, s_k² I) in D dimensions and x_t = √ᾱ x_0 + √(1 − ᾱ) ε:
  x_t | k ~ N(√ᾱ μ_k, v_k I),            v_k = ᾱ s_k² + 1 − ᾱ,
  r_k(x_t) ∝ w_k N(x_t; √ᾱ μ_k, v_k I)   (posterior responsibility of component k),
  E[ε | x_t]   = Σ_k r_k √(1 − ᾱ) (x_t − √ᾱ μ_k) / v_k,
  E[x_0 | x_t] = Σ_k r_k (μ_k + √ᾱ s_k² (x_t − √ᾱ μ_k) / v_k).
The optimal network of every prediction type is known exactly, so samplers, inversion and
solvers can be tested against the true data distribution instead of a trained network.

Class-conditional (`conditional=True`): class k is component k, so p(x_0 | y = k) = N(μ_k, s_k² I)
and the exact conditional predictions are the formulas above with r = one-hot(k); the null
class y = K gives the whole mixture. Classifier-free guidance is then testable exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn

from ddim.models import Model
from ddim.models.parameterization import Prediction, check_prediction, from_x0_eps
from ddim.schedule import NoiseSchedule


@dataclass(frozen=True)
class MixtureConfig:
    shape: tuple[int, ...]  # the shape of one sample, e.g. (1, 32, 32) or (2,)
    num_components: int
    prediction: Prediction = "eps"
    conditional: bool = False  # one class per component, y = num_components the null class

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        if not self.shape or any(not isinstance(s, int) or s < 1 for s in self.shape):
            raise ValueError(f"mixture shape must be positive integers, got {self.shape}")
        if not isinstance(self.num_components, int) or self.num_components < 1:
            raise ValueError(f"num_components must be a positive integer, got {self.num_components!r}")
        check_prediction(self.prediction)

    @property
    def num_classes(self) -> int | None:
        return self.num_components if self.conditional else None

    def to_dict(self) -> dict:
        return {
            "type": "gaussian-mixture",
            "shape": list(self.shape),
            "num_components": self.num_components,
            "prediction": self.prediction,
            **({"conditional": True} if self.conditional else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> MixtureConfig:
        prediction, conditional = d.get("prediction", "eps"), d.get("conditional", False)
        return cls(tuple(d["shape"]), d["num_components"], prediction, conditional)


class MixtureDenoiser(nn.Module):
    """The exact denoiser of a Gaussian mixture under a schedule: net(x_t, t[, y]) → eps, x0 or v."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        means: Tensor,
        stds: Tensor | float,
        weights: Tensor | None = None,
        prediction: Prediction = "eps",
        conditional: bool = False,
    ):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        k = means.shape[0]
        stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        weights = (
            torch.full((k,), 1.0 / k, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        values_known = not means.is_meta  # a mixture built on the meta device has shapes only
        if weights.shape != (k,) or (values_known and ((weights <= 0).any() or (stds < 0).any())):
            raise ValueError("mixture needs one positive weight and one std >= 0 per component")
        self.config = MixtureConfig(tuple(means.shape[1:]), k, prediction, conditional)
        self.register_buffer("means", means)  # (K, *shape)
        self.register_buffer("stds", stds)  # (K,)
        self.register_buffer("weights", weights / weights.sum())  # (K,)
        self.register_buffer("alpha_bar", schedule.alpha_bar.clone(), persistent=False)  # (T,)

    @classmethod
    def from_config(cls, config: dict, schedule: NoiseSchedule) -> MixtureDenoiser:
        """An empty mixture of the configured size, for `load_state_dict` to fill in."""
        cfg = MixtureConfig.from_dict(config)
        k = cfg.num_components
        zeros = torch.zeros(k, *cfg.shape)
        return cls(schedule, zeros, torch.zeros(k), torch.ones(k), cfg.prediction, cfg.conditional)

    def posterior(self, x_t: Tensor, alpha_bar: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(E[x_0 | x_t, y], E[ε | x_t, y]) in float64 for x_t (B, *shape) and ᾱ (B,).

        y (B,): the component k each row is conditioned on, or K (the null class) for the mixture.
        """
        b = x_t.shape[0]
        x = x_t.reshape(b, -1).to(torch.float64)  # (B, D)
        mu = self.means.reshape(self.means.shape[0], -1)  # (K, D)
        a = alpha_bar.to(torch.float64).reshape(b, 1)  # (B, 1)
        v = a * self.stds**2 + (1 - a)  # (B, K)
        diff = x[:, None, :] - a.sqrt()[:, :, None] * mu[None]  # (B, K, D)
        log_r = self.weights.log() - 0.5 * x.shape[1] * v.log() - (diff**2).sum(-1) / (2 * v)
        if y is not None:  # p(k | x_t, y) is one-hot(y) for a class, the mixture's r for the null class
            k = torch.arange(mu.shape[0], device=x.device)
            y = y.to(x.device).reshape(b, 1)  # (B, 1)
            log_r = log_r.masked_fill((y < mu.shape[0]) & (k != y), -math.inf)
        r = torch.softmax(log_r, dim=1)  # (B, K)
        eps = torch.einsum("bk,bkd->bd", r * (1 - a).sqrt() / v, diff)
        x0 = r @ mu + torch.einsum("bk,bkd->bd", r * a.sqrt() * self.stds**2 / v, diff)
        return x0.reshape(x_t.shape), eps.reshape(x_t.shape)

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if y is not None and not self.config.conditional:
            raise ValueError("this mixture is unconditional: it takes no class labels")
        alpha_bar = self.alpha_bar[t.to(self.alpha_bar.device)]  # (B,)
        x0, eps = self.posterior(x_t, alpha_bar, y)
        a = alpha_bar.reshape(-1, *([1] * (x_t.ndim - 1)))
        return from_x0_eps(x0, eps, a, self.config.prediction).to(x_t.dtype)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n exact draws of x_0 (float64) and the component each came from."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        z = torch.randn(n, *self.means.shape[1:], dtype=torch.float64, generator=generator)
        scale = self.stds[k].reshape(n, *([1] * (z.ndim - 1)))
        return self.means[k] + scale * z, k


def probability_flow(
    denoiser: MixtureDenoiser, x: Tensor, alpha_bar_start: float, alpha_bar_end: float = 1.0, steps: int = 400
) -> Tensor:
    """The exact solution of the deterministic sampling ODE from x at ᾱ_start to ᾱ_end, in float64.

    The ODE is DDIM's eq. 14, dx̄/dσ = E[ε | x_t] with x̄ = x/√ᾱ, σ = √((1 − ᾱ)/ᾱ), which every
    η = 0 sampler discretizes; its solution depends on the two noise levels only, not on the
    timesteps in between. Integrated here with classical RK4 in u = log σ (dx̄/du = σ E[ε | x_t]),
    `steps` steps uniform in u; ᾱ_end = 1 (clean data, σ = 0) is reached from σ = 1e-6, the
    part left out changing x by about 1e-6·|ε|.
    """
    sigma = [max(math.sqrt((1 - a) / a), 1e-6) for a in (alpha_bar_start, alpha_bar_end)]
    u = torch.linspace(math.log(sigma[0]), math.log(sigma[1]), steps + 1, dtype=torch.float64)
    b = x.shape[0]

    def velocity(x_bar: Tensor, u_k: Tensor) -> Tensor:  # dx̄/du at (x̄, u)
        s = u_k.exp()
        alpha_bar = (1 / (1 + s**2)).expand(b)  # (B,)
        _, eps = denoiser.posterior(x_bar / (1 + s**2).sqrt(), alpha_bar)
        return s * eps

    x_bar = x.to(torch.float64) / math.sqrt(alpha_bar_start)
    for u0, u1 in pairwise(u):
        h, mid = u1 - u0, (u0 + u1) / 2
        k1 = velocity(x_bar, u0)
        k2 = velocity(x_bar + h / 2 * k1, mid)
        k3 = velocity(x_bar + h / 2 * k2, mid)
        k4 = velocity(x_bar + h * k3, u1)
        x_bar = x_bar + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x_bar * math.sqrt(alpha_bar_end)


def gaussian_gain(schedule: NoiseSchedule, std: float, path: Sequence[int]) -> float:
    """For data N(μ, std² I), exact ε̂ and η = 0, DDIM along `path` (either direction, −1 = clean)
    maps x to √ᾱ_end μ + c (x − √ᾱ_start μ): c is the product of the per-step gains

        g(t → t') = (√(ᾱ_t' ᾱ_t) s² + √((1 − ᾱ_t')(1 − ᾱ_t))) / (ᾱ_t s² + 1 − ᾱ_t),

    from eq. 12 with x̂_0 = μ + √ᾱ_t s² (x − √ᾱ_t μ)/v_t, ε̂ = √(1 − ᾱ_t)(x − √ᾱ_t μ)/v_t.
    """
    c = 1.0
    for t, t_next in pairwise(path):
        a, a_next = schedule.alpha_bar_at(t).item(), schedule.alpha_bar_at(t_next).item()
        c *= (math.sqrt(a_next * a) * std**2 + math.sqrt((1 - a_next) * (1 - a))) / (a * std**2 + 1 - a)
    return c


def glyphs(size: int = 32) -> Tensor:
    """Eight simple shapes drawn on a size×size canvas, values in {−1, 1}: (8, 1, size, size)."""
    c = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    y, x = torch.meshgrid(c, c, indexing="ij")
    r = (x**2 + y**2).sqrt()
    shapes = [
        (r < 0.75) & (r > 0.45),  # ring
        r < 0.6,  # disc
        (x.abs().maximum(y.abs()) < 0.7) & (x.abs().maximum(y.abs()) > 0.45),  # square outline
        (x.abs() < 0.15) | (y.abs() < 0.15),  # plus
        ((x - y).abs() < 0.2) | ((x + y).abs() < 0.2),  # cross
        (y > -0.7) & (y < 0.6) & (x.abs() < (y + 0.7) / 1.3 * 0.7),  # triangle
        x.abs() + y.abs() < 0.75,  # diamond
        (torch.remainder(y + 1, 0.5) < 0.25) & (x.abs() < 0.8),  # stripes
    ]
    return torch.stack([torch.where(s, 1.0, -1.0) for s in shapes])[:, None]  # (8, 1, H, W)


GLYPH_NAMES = ("ring", "disc", "square", "plus", "cross", "triangle", "diamond", "stripes")


def toy_model(
    schedule: NoiseSchedule | None = None, size: int = 32, std: float = 0.1, conditional: bool = False
) -> Model:
    """The built-in analytic model `ddim.load("toy")`: eight glyphs with pixel noise `std`.

    conditional: one class per glyph, named as in GLYPH_NAMES (exact classifier-free guidance).
    """
    schedule = NoiseSchedule.linear() if schedule is None else schedule
    net = MixtureDenoiser(schedule, glyphs(size), std, conditional=conditional).eval()
    info = {"description": f"analytic Gaussian mixture of 8 glyphs, {size}x{size}, std {std}"}
    return Model(net, schedule, (1, size, size), "eps", info, GLYPH_NAMES if conditional else ())
