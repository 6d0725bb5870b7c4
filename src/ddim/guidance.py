"""Classifier-free guidance (Ho & Salimans 2022) and dynamic thresholding (Saharia et al. 2022).

A class-conditional network ε_θ(x_t, t, y), trained with its labels dropped to the null class ∅
(index num_classes) some of the time, is also an unconditional one. Guidance with weight w
samples with

    ε̃(x_t, t, y) = ε_θ(x_t, t, ∅) + w · (ε_θ(x_t, t, y) − ε_θ(x_t, t, ∅)),

w = 0 unconditional, w = 1 plain conditional, w > 1 guided (Ho & Salimans eq. 6 write 1 + w
for our w). The combination is affine with weights summing to 1, so combining x̂_0- or
v-predictions gives the same x̂_0 and ε̂ as combining ε: the network's raw outputs are combined.
`guided` wraps a network into such an ε-function; every sampler and inversion take it as they
take any model callable f(x_t, t).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Integral

import torch
from torch import Tensor

from ddim.models import Model, num_classes
from ddim.models.parameterization import Prediction, eps_from_x0, from_x0_eps, to_x0_eps
from ddim.schedule import NoiseSchedule

MAX_GUIDANCE = 20.0  # larger w is refused as a likely typo: ε̃ would be ~w times the class difference
Classes = int | str | Sequence[int | str] | Tensor
EpsFn = Callable[[Tensor, Tensor], Tensor]


def check_guidance(w: float) -> float:
    """w as a float in [0, MAX_GUIDANCE]."""
    if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w <= MAX_GUIDANCE:
        raise ValueError(f"guidance must be a number in [0, {MAX_GUIDANCE:g}], got {w!r}")
    return float(w)


def class_labels(model: Model, classes: Classes, n: int) -> Tensor:
    """`classes` (one index or name for all n samples, or one per sample) as int64 labels (n,).

    A string is a class name of the model, else a decimal index; indices are in [0, num_classes).
    """
    if not isinstance(model, Model):
        raise ValueError("classes need a class-conditional ddim Model (a plain callable has no classes)")
    k = model.num_classes
    if k is None:
        raise ValueError("classes were given but the model is unconditional (it was trained without classes)")
    if isinstance(classes, Tensor):
        classes = classes.reshape(-1).tolist() if classes.ndim else classes.item()
    items = list(classes) if isinstance(classes, Sequence) and not isinstance(classes, str) else [classes]
    if len(items) not in (1, n):
        raise ValueError(f"give one class for all {n} samples or one per sample, got {len(items)} classes")
    labels = [_class_index(model, c) for c in items]
    return torch.tensor(labels * n if len(labels) == 1 else labels, dtype=torch.int64)


def _class_index(model: Model, c: int | str) -> int:
    k, names = model.num_classes, model.class_names
    if isinstance(c, str):
        if c in names:
            return names.index(c)
        c = int(c) if c.strip().isdecimal() else c
    if isinstance(c, Integral) and not isinstance(c, bool) and 0 <= int(c) < k:
        return int(c)
    listed = f" ({', '.join(names[:12])}{', …' if len(names) > 12 else ''})" if names else ""
    raise ValueError(f"unknown class {c!r}: the model's classes are 0 to {k - 1}{listed}")


def conditioning(
    model: Model | Callable, classes: Classes | None, guidance: float | None, n: int
) -> tuple[Tensor | None, float]:
    """(labels (n,) or None, w) for `sample`/`invert`: None means the unconditional model
    (a conditional one with its null class). guidance defaults to 1 when classes are given."""
    if classes is None:
        if guidance is not None:
            raise ValueError("guidance needs classes (classes=) to guide towards")
        return None, 1.0
    labels = class_labels(model, classes, n)
    return labels, 1.0 if guidance is None else check_guidance(guidance)


def guided(net: Callable[..., Tensor], y: Tensor, w: float, null: int | None = None) -> EpsFn:
    """f(x_t, t) = net(x_t, t, ∅) + w · (net(x_t, t, y) − net(x_t, t, ∅)) for labels y (B,).

    Both evaluations share one forward pass on the batch doubled; w = 0 and w = 1 need one only.
    null: the null class's index, by default `net.config.num_classes` (give it when `net` wraps
    the network, e.g. as `ddim.execution.prepare` does).
    """
    null = num_classes(net) if null is None else null
    if null is None:
        raise ValueError("guidance needs a class-conditional network (its config has no num_classes)")

    def eps(x: Tensor, t: Tensor) -> Tensor:
        labels = y.to(x.device)
        if w in (0.0, 1.0):
            return net(x, t, labels if w == 1.0 else torch.full_like(labels, null))
        out = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, torch.full_like(labels, null)]))
        cond, uncond = out.to(x.dtype).chunk(2)  # (B, *shape) each
        return uncond + w * (cond - uncond)

    return eps


def check_threshold(p: float) -> float:
    """A dynamic-thresholding percentile p in (0, 1]."""
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1:
        raise ValueError(f"the dynamic-thresholding percentile must be in (0, 1], got {p!r}")
    return p


def dynamic_thresholding(net: EpsFn, schedule: NoiseSchedule, prediction: Prediction, p: float) -> EpsFn:
    """Imagen's dynamic thresholding (Saharia et al. 2022, §2.3) as a wrapper of `net`: per sample,
    s = max(1, p-quantile of |x̂_0|) and x̂_0 ← clamp(x̂_0, −s, s) / s; ε̂ follows x̂_0."""
    check_threshold(p)

    def thresholded(x: Tensor, t: Tensor) -> Tensor:
        out = net(x, t).to(x.dtype)
        a = schedule.alpha_bar_at(t.cpu()).to(device=x.device, dtype=x.dtype)
        a = a.view(-1, *([1] * (x.ndim - 1)))  # (B, 1, 1, 1)
        x0, _ = to_x0_eps(out, x, a, prediction)
        s = torch.quantile(x0.abs().flatten(1), p, dim=1).clamp(min=1.0)  # (B,)
        s = s.view_as(a)
        x0 = torch.maximum(torch.minimum(x0, s), -s) / s
        return from_x0_eps(x0, eps_from_x0(x, x0, a), a, prediction)

    return thresholded
