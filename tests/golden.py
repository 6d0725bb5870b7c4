"""Golden sample hashes: every sampler × spacing × η (and clipping, explicit timesteps, guidance,
inversion, interpolation and editing) on the toy oracle and the shipped models, hashed bit for bit.

They pin what the public keyword API (DESIGN §2) computes, so a refactor of the sampling shell
can prove it changes nothing: `tests/test_golden.py` recomputes every case and compares.
Regenerate (only when a change of the samples is intended, and say so in the commit):

    OMP_NUM_THREADS=1 .venv/bin/python tests/golden.py
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

import ddim
from ddim.execution import Execution
from ddim.toy import toy_model

GOLDEN = Path(__file__).parent / "data" / "golden_samples.json"
SPACINGS = ("uniform", "quadratic", "trailing", "linspace", "logsnr")
# (sampler, eta): every η a sampler allows from {0, 0.5, 1}, None where it fixes η.
SAMPLER_ETAS = (
    ("ddim", 0.0), ("ddim", 0.5), ("ddim", 1.0), ("ddpm", None), ("ddpm-large", None),
    ("dpm-solver++", None), ("unipc", None), ("plms", None),
)  # fmt: skip
STEPS = {"toy": 6, "mnist": 4}  # short chains: the test stays fast, every solver still uses its history
N = {"toy": 3, "mnist": 2}


@cache
def model(name: str) -> ddim.Model:
    """ "toy": the analytic oracle on 8×8 glyphs; else the shipped checkpoint of that name."""
    return toy_model(size=8) if name == "toy" else ddim.load(name)


def digest(x: Tensor) -> str:
    return hashlib.sha256(x.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()[:32]


def _sample(name: str, **kw) -> Callable[[], Tensor]:
    return lambda: ddim.sample(model(name), N.get(name, 2), seed=7, **kw)


@cache
def _images(name: str) -> Tensor:
    """Fixed images in [-1, 1] to invert: two samples of the model itself, clamped."""
    return ddim.sample(model(name), 2, steps=5, seed=11).clamp(-1, 1)


def cases() -> dict[str, Callable[[], Tensor]]:
    """Case name → a function computing its tensor."""
    out: dict[str, Callable[[], Tensor]] = {}
    for name in ("toy", "mnist"):
        S = STEPS[name]
        for sampler, eta in SAMPLER_ETAS:
            for spacing in SPACINGS:
                for clip in (None, True):
                    key = f"{name}/sample/{sampler}/eta={eta}/{spacing}/clip={clip}"
                    out[key] = _sample(name, steps=S, sampler=sampler, eta=eta, spacing=spacing, clip=clip)
            out[f"{name}/sample/{sampler}/eta={eta}/timesteps"] = _sample(
                name, timesteps=[999, 700, 420, 150, 40, 0], sampler=sampler, eta=eta
            )
            out[f"{name}/sample/{sampler}/eta={eta}/timesteps-above-0"] = _sample(
                name, timesteps=[900, 500, 200, 60], sampler=sampler, eta=eta
            )
        out[f"{name}/sample/ddim/eta=0.5/batch_size=1/start_index=3"] = _sample(
            name, steps=S, eta=0.5, batch_size=1, start_index=3
        )
        out[f"{name}/sample/ddim/bf16"] = _sample(name, steps=S, precision="bf16")
        out[f"{name}/sample/ddim/dynamic_threshold"] = _sample(name, steps=S, dynamic_threshold=0.9)
        out[f"{name}/sample/ddim/trajectory"] = lambda name=name, S=S: torch.cat(
            [t.flatten() for t in _trajectory(name, S)]
        )
        for spacing in SPACINGS:
            out[f"{name}/invert/{spacing}"] = lambda name=name, S=S, sp=spacing: ddim.invert(
                model(name), _images(name), steps=S, spacing=sp
            )
        out[f"{name}/invert/batch_size=1/bf16"] = lambda name=name, S=S: ddim.invert(
            model(name), _images(name), steps=S, execution=Execution(batch_size=1, precision="bf16")
        )
        out[f"{name}/reconstruct"] = lambda name=name, S=S: ddim.reconstruct(
            model(name), _images(name), steps=S
        )
        out[f"{name}/interpolate"] = lambda name=name, S=S: ddim.interpolate(
            model(name), *ddim.seeded_latents(model(name).image_shape, 3, [0, 1]), num=3, steps=S
        )
    cond = "mnist-cond"
    for guidance in (None, 0.0, 2.0):
        out[f"{cond}/sample/classes/guidance={guidance}"] = _sample(
            cond, steps=4, classes=[3, 8], guidance=guidance
        )
    for sampler, eta in (("ddim", 0.5), ("unipc", None), ("ddpm-large", None)):
        out[f"{cond}/sample/{sampler}/eta={eta}/guidance=3"] = _sample(
            cond, steps=4, sampler=sampler, eta=eta, classes=7, guidance=3.0, dynamic_threshold=0.95
        )
    out[f"{cond}/sample/unconditional"] = _sample(cond, steps=4)
    out[f"{cond}/invert/classes"] = lambda: ddim.invert(
        model(cond), _images(cond), steps=4, classes=[1, 2], guidance=1.5
    )
    out[f"{cond}/edit/inversion"] = lambda: ddim.edit(model(cond), _images(cond), 5, steps=4)
    out[f"{cond}/edit/inversion/strength"] = lambda: ddim.edit(
        model(cond), _images(cond), [5, 6], steps=4, strength=0.6, from_class=1, method="inversion"
    )
    out[f"{cond}/edit/sdedit"] = lambda: ddim.edit(
        model(cond), _images(cond), 5, steps=4, strength=0.5, seed=2
    )
    return out


def _trajectory(name: str, S: int) -> tuple[Tensor, ...]:
    x, traj = ddim.sample(model(name), 2, steps=S, eta=1.0, seed=5, return_trajectory=True)
    return x, traj.timesteps.double(), traj.xt, traj.x0


def platform() -> dict[str, str]:
    """What the hashes hold for: float rounding differs between torch builds and CPU kernels
    (and between thread counts, so every case runs on one thread)."""
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    hashes = {k: digest(f()) for k, f in cases().items()}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"platform": platform(), "hashes": hashes}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}: {len(hashes)} cases")
