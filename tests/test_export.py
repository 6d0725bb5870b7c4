"""Export: diffusers' pipelines loaded from our folders give our samples; ONNX Runtime gives our ε.

diffusers 0.42.1 and onnxruntime are independent implementations: each side runs its own
network code and its own update arithmetic on the same x_T (and, for DDPM, the same step noise).

Tolerances, and why (max |Δ| on images in [0, 1]):
- diffusers' pipelines: one forward pass of the same weights differs by float32 rounding (SDPA vs
  diffusers' attention, relative ≤ 1.4e-6, tests/convert/test_diffusers.py), and diffusers keeps
  ᾱ_t in float32 where we use float64; over S steps each side feeds its own x_t back. Measured
  (DDIM η = 0 and DDPM, 3 seeds): ≤ 9.5e-6 (mnist, S = 10), ≤ 1.1e-5 (random CIFAR-10 U-Net,
  S = 5), ≤ 7.8e-6 (small nets, each prediction type, cosine β, S = 10); tolerance 5e-5. One
  timestep off (steps_offset = 1) or ending at ᾱ_0 instead of 1 moves a trajectory by 8e-5 to
  1e-2 relative (tests/convert/test_diffusers.py), and a swapped weight far more.
- ONNX Runtime: the same graph in another engine, attention decomposed into matmul/softmax;
  measured ≤ 8.8e-7 relative to max |ε| (tiny net, batches 1, 5, 16; mnist 2.2e-7); tolerance 1e-5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

import ddim
from conftest import tiny_unet_model
from ddim.export import to_diffusers, to_onnx
from ddim.export.diffusers import unet2d_config
from ddim.models.unet import UNet, UNetConfig
from ddim.sampling import denoise
from helpers import needs_builtin, perturb_vectors, run_cli

IMAGE_ATOL = 5e-5
ONNX_RTOL = 1e-5


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] → [0, 1], as the pipelines return them (output_type="pt")."""
    return (x / 2 + 0.5).clamp(0, 1)


def pipelines_match(model: ddim.Model, folder, steps: int, n: int = 2, seed: int = 0) -> tuple[float, float]:
    """(max |Δ| of DDIMPipeline η = 0 vs ddim.sample, of DDPMPipeline vs our DDPM), same x_T and noise."""
    shape = (n, *model.image_shape)
    g = torch.Generator().manual_seed(seed)
    theirs = DDIMPipeline.from_pretrained(folder)(
        batch_size=n, generator=g, num_inference_steps=steps, eta=0.0, output_type="pt"
    ).images
    x_T = randn_tensor(shape, generator=torch.Generator().manual_seed(seed))  # the pipeline's first draw
    ours = ddim.sample(model, noise=x_T, steps=steps, spacing="uniform", progress=False)
    ddim_err = (to_unit(ours) - theirs).abs().max().item()

    g = torch.Generator().manual_seed(seed + 1)
    theirs = DDPMPipeline.from_pretrained(folder)(
        batch_size=n, generator=g, num_inference_steps=steps, output_type="pt"
    ).images
    g = torch.Generator().manual_seed(seed + 1)
    x_T = randn_tensor(shape, generator=g)  # then one draw per step but the last, as DDPMScheduler.step
    ts = [*ddim.timesteps(model.schedule.num_timesteps, steps, "uniform").tolist(), -1]
    with torch.no_grad():
        ours = denoise(model.net, x_T, model.schedule, ts, prediction=model.prediction, sampler="ddpm",
                       step_noise=lambda: randn_tensor(shape, generator=g))  # fmt: skip
    return ddim_err, (to_unit(ours) - theirs).abs().max().item()


@needs_builtin("mnist")
def test_diffusers_pipelines_reproduce_the_shipped_mnist(tmp_path, capsys):
    code, out, err = run_cli(capsys, "export", "mnist", "--format", "diffusers", "--out", tmp_path / "mnist")
    assert code == 0, err
    assert f"wrote: {tmp_path / 'mnist'}" in out
    folder = tmp_path / "mnist"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.*")) == [
        "model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]  # fmt: skip
    ddim_err, ddpm_err = pipelines_match(ddim.load("mnist"), tmp_path / "mnist", steps=10)
    assert ddim_err <= IMAGE_ATOL
    assert ddpm_err <= IMAGE_ATOL


def test_diffusers_pipelines_reproduce_a_random_cifar10_unet(tmp_path):
    torch.manual_seed(0)
    net = perturb_vectors(UNet(UNetConfig()).eval())  # DDPM's CIFAR-10 U-Net, 35,746,307 parameters
    model = ddim.Model(net, ddim.NoiseSchedule.linear(1000, 1e-4, 0.02), (3, 32, 32))
    to_diffusers(model, tmp_path / "c10")
    ddim_err, ddpm_err = pipelines_match(model, tmp_path / "c10", steps=5)
    assert ddim_err <= IMAGE_ATOL
    assert ddpm_err <= IMAGE_ATOL


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_prediction_type_and_schedule_survive(tmp_path, prediction):
    small = tiny_unet_model(
        1, num_timesteps=1000, in_channels=3, out_channels=3, resolution=16, ch=16, attn_resolutions=(8,)
    )
    model = ddim.Model(
        perturb_vectors(small.net), ddim.NoiseSchedule.cosine(1000), small.image_shape, prediction
    )
    to_diffusers(model, tmp_path / "m")
    ddim_err, ddpm_err = pipelines_match(model, tmp_path / "m", steps=10)
    assert ddim_err <= IMAGE_ATOL
    assert ddpm_err <= IMAGE_ATOL


def test_the_cifar10_export_is_google_ddpm_cifar10_32s_config():
    from benchmarks.vs_diffusers import DDPM_CIFAR10_32

    ours = unet2d_config(UNetConfig(dropout=0.0))
    assert {k: v for k, v in ours.items() if k in DDPM_CIFAR10_32} == DDPM_CIFAR10_32
    assert UNet2DModel.from_config(ours).num_parameters() == 35_746_307


def test_an_export_loads_back_bit_for_bit(tmp_path, make_tiny_model):
    model = make_tiny_model(3)
    to_diffusers(model, tmp_path / "m")
    back = ddim.load(tmp_path / "m")
    assert back.net.config == model.net.config
    assert all(torch.equal(v, back.net.state_dict()[k]) for k, v in model.net.state_dict().items())
    assert torch.equal(back.schedule.betas, model.schedule.betas)  # float64 through JSON: exact
    assert (back.prediction, back.image_shape) == (model.prediction, model.image_shape)


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("toy", "diffusers export needs the DDPM U-Net; this model's network is 'gaussian-mixture'"),
        ("conditional", "this model is class-conditional (3 classes); diffusers' DDPMPipeline/DDIMPipeline "
         "take no class labels and have no classifier-free guidance"),
        ("no-conv", "resamples without convolutions (resamp_with_conv = false)"),
    ],
)  # fmt: skip
def test_what_diffusers_cannot_express_is_refused_in_one_line(tmp_path, capsys, model, says):
    if model != "toy":
        extra = {"num_classes": 3} if model == "conditional" else {"resamp_with_conv": False}
        model = ddim.save(tiny_unet_model(0, **extra), tmp_path / "m.safetensors")
    code, _, err = run_cli(capsys, "export", model, "--format", "diffusers", "--out", tmp_path / "out")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert says in err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path, capsys, tiny_checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "export", tiny_checkpoint, "--format", "diffusers", "--out", out)
    assert code == 2
    assert f"{out} exists; pass --overwrite to replace it" in err
    assert (out / "keep.txt").read_text() == "mine"
    code, _, err = run_cli(
        capsys, "export", tiny_checkpoint, "--format", "diffusers", "--out", out, "--overwrite"
    )
    assert code == 0, err
    assert not (out / "keep.txt").exists()
    assert (out / "model_index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.safetensors"]


def onnx_matches(model: ddim.Model, path, batches=(1, 5)) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for b in batches:
        x = torch.randn(b, *model.image_shape, generator=g)
        t = torch.randint(0, model.schedule.num_timesteps, (b,), generator=g)
        feed = {"x_t": x.numpy(), "t": t.numpy()}
        args = (x, t)
        if model.num_classes is not None:
            y = torch.randint(0, model.num_classes + 1, (b,), generator=g)
            feed["y"], args = y.numpy(), (x, t, y)
        (theirs,) = session.run(None, feed)
        with torch.no_grad():
            ours = model.net(*args)
        assert theirs.shape == tuple(ours.shape)
        worst = max(worst, (np.abs(theirs - ours.numpy()).max() / ours.abs().max()).item())
    return worst


def test_onnx_runtime_reproduces_the_network_for_any_batch(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model = tiny_unet_model(2)
    path = ddim.save(model, tmp_path / "m.safetensors")
    code, _out, err = run_cli(capsys, "export", path, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert code == 0, err
    assert onnx_matches(model, tmp_path / "m.onnx") <= ONNX_RTOL
    import onnx

    proto = onnx.load(tmp_path / "m.onnx")
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["ddim"])
    assert meta["prediction"] == "eps"
    assert meta["image_shape"] == [1, 8, 8]
    assert torch.equal(torch.tensor(meta["betas"], dtype=torch.float64), model.schedule.betas)
    assert [i.name for i in proto.graph.input] == ["x_t", "t"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch


@pytest.mark.slow
def test_onnx_export_of_a_class_conditional_net_takes_the_class(tmp_path):
    pytest.importorskip("onnxruntime")
    model = tiny_unet_model(4, num_classes=3)
    to_onnx(model, tmp_path / "c.onnx")
    assert onnx_matches(model, tmp_path / "c.onnx", batches=(3,)) <= ONNX_RTOL


def test_onnx_out_must_end_in_onnx(tmp_path, capsys, tiny_checkpoint):
    code, _, err = run_cli(capsys, "export", tiny_checkpoint, "--format", "onnx", "--out", tmp_path / "m.bin")
    assert code == 2
    assert "--out must end in .onnx for --format onnx, got m.bin" in err
