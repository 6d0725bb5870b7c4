"""Execution options (precision, channels-last, torch.compile): same samples, reached through every
entry point, and compile failures in one line. Their speed is measured by benchmarks/sampling.py.

torch.compile is exercised with a counting backend that returns the traced graph unchanged
(Dynamo's own tracing, guards and caching, without Inductor's minutes of C++ compilation): the
traced graph runs the same kernels as eager mode, so its samples are equal bit for bit.
"""

import json

import numpy as np
import pytest
import torch

import ddim
from ddim.execution import CompileError, Execution
from ddim.schedule import NoiseSchedule
from helpers import run_cli


@pytest.fixture
def failing_compiler(monkeypatch):
    def backend(gm, example_inputs):
        raise RuntimeError("C++ compiler not found\n(a long explanation follows)")

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda net, **kw: real(net, **{**kw, "backend": backend}))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_channels_last_changes_the_memory_layout_not_the_weights(tiny_model):
    weights = {k: v.clone() for k, v in tiny_model.net.state_dict().items()}
    eager = ddim.sample(tiny_model, 4, steps=5, seed=0)
    fast = ddim.sample(tiny_model, 4, steps=5, seed=0, channels_last=True)
    convs = [m.weight for m in tiny_model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert all(torch.equal(v, weights[k]) for k, v in tiny_model.net.state_dict().items())
    # only the convolutions' summation order changes: float32 rounding, carried through 5 steps
    rel = ((fast - eager).abs().max() / eager.abs().max()).item()
    assert rel <= 1e-5, rel  # measured ≤ 3.6e-7 (3 seeds)


def test_channels_last_is_for_images():
    schedule = NoiseSchedule.linear(10)
    with pytest.raises(ValueError, match=r"channels_last is for images \(C, H, W\)"):
        ddim.sample(lambda x, t: x, 2, shape=(3,), schedule=schedule, channels_last=True)


def test_compiled_network_gives_eager_samples_and_compiles_once_per_batch_shape(tiny_model, graphs):
    eager = ddim.sample(tiny_model, 4, steps=3, seed=0, eta=0.5)
    compiled = ddim.sample(tiny_model, 4, steps=3, seed=0, eta=0.5, compile=True)
    assert torch.equal(compiled, eager)
    assert len(graphs) == 1
    ddim.sample(tiny_model, 4, steps=5, seed=1, compile=True, channels_last=False)  # a new call
    ddim.invert(
        tiny_model, eager.clamp(-1, 1), steps=3, execution=Execution(compile=True)
    )  # another function, same shapes
    assert len(graphs) == 1
    ddim.sample(tiny_model, 6, steps=2, batch_size=4, compile=True)  # batches of 4 and 2
    assert len(graphs) == 2


@pytest.mark.usefixtures("failing_compiler")
def test_compile_failure_is_one_line_from_the_api_and_the_cli(tiny_model, tiny_checkpoint, capsys):
    with pytest.raises(CompileError, match=r"torch.compile failed: RuntimeError: C\+\+ compiler not found"):
        ddim.sample(tiny_model, 1, steps=2, compile=True)
    code, _, err = run_cli(
        capsys, "sample", "--model", tiny_checkpoint, "--n", 1, "--steps", 2, "--compile", "--quiet"
    )
    assert code == 2
    assert err.startswith("ddim sample: error: torch.compile failed: RuntimeError: C++ compiler not found")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_cli_passes_every_execution_option_to_the_api(tmp_path, capsys, tiny_checkpoint, precision):
    # fp16 autocast runs on the CPU too (PyTorch ≥ 2.3), slowly on CPUs without fp16 arithmetic
    model = ddim.load(tiny_checkpoint)
    options = {"precision": precision, "channels_last": True}
    flags = ["--precision", precision, "--channels-last", "--quiet"]
    code, _, err = run_cli(capsys, "sample", "--model", tiny_checkpoint, "-n", 3, "--steps", 3, "--seed", 2,
                           "--npz", tmp_path / "s.npz", *flags)  # fmt: skip
    assert code == 0, err
    expected = ddim.sample(model, 3, steps=3, seed=2, **options)
    assert not torch.equal(expected, ddim.sample(model, 3, steps=3, seed=2))  # autocast really ran
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "s.npz")["x"]), expected)

    images = tmp_path / "x.npz"
    np.savez(images, x_test=((expected[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy())
    code, _, err = run_cli(capsys, "invert", "--model", tiny_checkpoint, "--images", images, "--steps", 3,
                           "--out", tmp_path / "z.npz", *flags)  # fmt: skip
    assert code == 0, err
    x0 = torch.from_numpy(np.load(images)["x_test"]).float()[:, None] / 127.5 - 1
    latents = torch.from_numpy(np.load(tmp_path / "z.npz")["latents"])
    assert torch.equal(latents, ddim.invert(model, x0, steps=3, execution=Execution(**options)))

    code, out, _ = run_cli(capsys, "sample", "--dry-run", *flags, "--compile")
    assert code == 0
    settings = json.loads(out)
    assert (settings["precision"], settings["channels_last"], settings["compile"]) == (precision, True, True)
