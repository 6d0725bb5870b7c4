"""Official DDPM/DDIM checkpoints: saved the way the official code saves them, loaded exactly.

The official module names are ours, so a state_dict of our U-Net with random weights is an
official checkpoint; loading must give back the very same tensors (torch.equal, no tolerance).
"""

from __future__ import annotations

import pathlib
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

import ddim
from ddim.checkpoint import CheckpointError
from ddim.convert import import_model
from ddim.convert.official import KNOWN, infer_config
from ddim.models.unet import UNet, UNetConfig
from helpers import perturb_vectors, run_cli

# small, but with the official GroupNorm(32): ch a multiple of 32
TINY = UNetConfig(resolution=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))


def random_unet(config: UNetConfig, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    net = UNet(config).eval()
    return perturb_vectors(net)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def ddim_training_list(net: UNet, ema: UNet | None, ema_prefix: str = "") -> list:
    """What ermongroup/ddim's runner saves: [DataParallel state, Adam state, epoch, step, EMA]."""
    model = nn.DataParallel(net)  # on the CPU it only wraps: keys gain "module."
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    model(torch.randn(1, 3, net.config.resolution, net.config.resolution), torch.tensor([5])).sum().backward()
    opt.step()  # an optimizer state with tensors, as in a real checkpoint
    states = [model.state_dict(), opt.state_dict(), 3, 1000]
    if ema is not None:  # EMAHelper.state_dict(): {name: tensor} of the parameters
        states.append({ema_prefix + k: v.clone() for k, v in ema.named_parameters()})
    return states


# --- round trips ------------------------------------------------------------------------------


def test_cifar10_state_dict_is_recognised_and_loads_exactly(tmp_path):
    net = random_unet(UNetConfig())  # the DDPM CIFAR-10 U-Net, 35,746,307 parameters
    torch.save(net.state_dict(), tmp_path / "model-790000.ckpt")  # pesser/pytorch_diffusion's layout
    model = ddim.load(tmp_path / "model-790000.ckpt")
    assert model.net.config == KNOWN["cifar10"]
    assert model.num_parameters == 35_746_307
    assert model.info["architecture"].startswith("cifar10")
    assert (model.image_shape, model.prediction, model.schedule.num_timesteps) == ((3, 32, 32), "eps", 1000)
    torch.testing.assert_close(model.schedule.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    assert_same_weights(model.net, net)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0, 999])
    with torch.no_grad():
        assert torch.equal(model.net(x, t), net(x, t))


@pytest.mark.parametrize(("name", "levels", "attn_level"), [("celeba64", 5, 2), ("lsun256", 6, 4)])
def test_celeba_and_lsun_architectures_are_recognised_from_shapes(name, levels, attn_level):
    with torch.device("meta"):  # shapes only: no memory for LSUN's 114M parameters
        state = UNet(KNOWN[name]).state_dict()
    config, note = infer_config(state, pathlib.Path(f"{name}.ckpt"))
    assert config == KNOWN[name]
    assert (len(config.ch_mult), config.resolutions()[attn_level]) == (levels, 16)
    assert note.startswith(name)


@pytest.mark.parametrize("ema_prefix", ["", "module."])
def test_ddim_training_list_loads_its_ema_entry(tmp_path, ema_prefix):
    net, ema = random_unet(TINY), random_unet(TINY, seed=1)  # EMA weights differ from the training ones
    torch.save(ddim_training_list(net, ema, ema_prefix), tmp_path / "ckpt.pth")
    model = import_model(tmp_path / "ckpt.pth", resolution=8)
    assert_same_weights(model.net, ema)
    assert model.info["weights"] == "entry 4 of the 5-entry DDIM training list (the EMA weights)"


def test_ddim_training_list_without_ema_gives_the_training_weights(tmp_path):
    net = random_unet(TINY)
    torch.save(ddim_training_list(net, None), tmp_path / "ckpt.pth")
    model = import_model(tmp_path / "ckpt.pth", resolution=8)
    assert_same_weights(model.net, net)
    assert "no EMA entry: the training weights" in model.info["weights"]


def test_an_unknown_architecture_needs_its_resolution(tmp_path, capsys):
    net = random_unet(TINY)
    torch.save(net.state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(CheckpointError, match=r"not one of the known architectures .*resolution=R"):
        ddim.load(tmp_path / "tiny.pt")
    code, out, _ = run_cli(
        capsys, "convert", tmp_path / "tiny.pt", "--resolution", 8, "--out", tmp_path / "t.safetensors"
    )
    assert code == 0
    assert "resolution 8 given" in out
    native = ddim.load(tmp_path / "t.safetensors")
    assert native.net.config == UNetConfig(**{**TINY.__dict__, "dropout": 0.0})
    assert_same_weights(native.net, net)


def test_format_is_sniffed_without_a_suffix_and_a_bad_resolution_is_named(tmp_path):
    net = random_unet(TINY)
    torch.save(net.state_dict(), tmp_path / "weights")  # no suffix: the zip header says torch
    assert_same_weights(import_model(tmp_path / "weights", resolution=8).net, net)
    with pytest.raises(CheckpointError, match=r"resolution 7 must be divisible by 2\^\(levels - 1\) = 2"):
        import_model(tmp_path / "weights", resolution=7)


# --- refusals ---------------------------------------------------------------------------------


class Payload:
    """Unpickling this calls Path.touch(marker): code run by merely loading the file."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.mark.parametrize("container", ["torch.save", "pickle.dump"])
def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, container):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.ckpt"
    state = {**random_unet(TINY).state_dict(), "conv_in.bias": Payload(marker)}
    if container == "torch.save":
        torch.save(state, evil)
        torch.load(evil, weights_only=False)  # the payload is real: a trusting load runs it
    else:
        evil.write_bytes(pickle.dumps(state, protocol=2))
        pickle.loads(evil.read_bytes())
    assert marker.exists()
    marker.unlink()

    result = subprocess.run(
        [sys.executable, "-m", "ddim", "convert", str(evil), "--out", str(tmp_path / "out.safetensors")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("ddim convert: error: ")
    assert "refused" in result.stderr
    assert "could run code" in result.stderr
    assert "(Unsupported global: GLOBAL " in result.stderr  # names what it would have called
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def _edit(state: dict, edit: str) -> None:
    if edit == "missing":
        del state["mid.attn_1.k.bias"]
    elif edit == "extra":
        state["up.1.block.0.conv_shortcut.weight"] = torch.zeros(8, 24, 3, 3)
    elif edit == "shape":
        state["conv_out.bias"] = torch.zeros(5)
    elif edit == "no conv_in":
        del state["conv_in.weight"]
    elif edit == "no blocks":
        for k in [k for k in state if k.startswith("down.")]:
            del state[k]
    elif edit == "level channels":
        state["down.1.block.0.conv1.weight"] = torch.zeros(40, 32, 3, 3)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("missing", r"missing \['mid.attn_1.k.bias'\], unexpected \[\]"),
        ("extra", r"missing \[\], unexpected \['up.1.block.0.conv_shortcut.weight'\]"),
        ("shape", r"conv_out.bias has shape \(5,\), the architecture needs \(3,\)"),
        ("no conv_in", "cannot infer the architecture: missing conv_in.weight"),
        ("no blocks", r"cannot infer the architecture: no down.<level>.block.<j> weights"),
        ("level channels", "level 1 has 40 channels, not a multiple of ch = 32"),
    ],
)
def test_weights_that_do_not_fit_are_refused_in_one_line(tmp_path, capsys, edit, message):
    state = random_unet(TINY).state_dict()
    _edit(state, edit)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=message):
        import_model(tmp_path / "bad.pth", resolution=8)
    for argv in (
        ["info", tmp_path / "bad.pth"],
        ["convert", tmp_path / "bad.pth", "--out", tmp_path / "o.safetensors"],
    ):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2
        assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"PK\x03\x04 not really a zip", "not a readable PyTorch checkpoint"),
        (b"", "not a readable PyTorch checkpoint"),
        (b"hello world", "not a readable PyTorch checkpoint"),  # the unpickler raises a KeyError
    ],
)
def test_corrupt_files_are_refused(tmp_path, content, message):
    (tmp_path / "x.ckpt").write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        ddim.load(tmp_path / "x.ckpt")
    assert "\n" not in str(info.value)


def test_truncated_checkpoint_and_other_contents(tmp_path):
    torch.save(random_unet(TINY).state_dict(), tmp_path / "a.pt")
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "a.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        ddim.load(tmp_path / "a.pt")
    torch.save({"step": 3}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="holds a dict, not a state_dict or the DDIM training list"):
        ddim.load(tmp_path / "b.pt")
    torch.save([1, 2], tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="a list of 2 entries, none of them a state_dict"):
        ddim.load(tmp_path / "c.pt")


# --- the command line -------------------------------------------------------------------------


def test_convert_writes_atomically_and_never_clobbers(tmp_path, capsys):
    torch.save(random_unet(UNetConfig()).state_dict(), tmp_path / "cifar.ckpt")
    out = tmp_path / "cifar.safetensors"
    out.write_bytes(b"earlier work")
    code, _, err = run_cli(capsys, "convert", tmp_path / "cifar.ckpt", "--out", out)
    assert code == 2
    assert "exists; pass --overwrite" in err
    assert out.read_bytes() == b"earlier work"
    code, out_text, _ = run_cli(capsys, "convert", tmp_path / "cifar.ckpt", "--out", out, "--overwrite")
    assert code == 0
    assert "cifar10 (the official config" in out_text
    assert "35,746,307 parameters" in out_text
    assert_same_weights(ddim.load(out).net, ddim.load(tmp_path / "cifar.ckpt").net)
    code, info, _ = run_cli(capsys, "info", tmp_path / "cifar.ckpt")
    assert code == 0
    assert "official DDPM/DDIM PyTorch checkpoint" in info
    code, _, err = run_cli(capsys, "convert", out, "--out", tmp_path / "again.safetensors")
    assert code == 2
    assert "already a native ddim checkpoint" in err
