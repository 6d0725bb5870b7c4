"""diffusers UNet2DModel folders: the same function as diffusers computes, or a one-line refusal.

Every model is a real `UNet2DModel` (diffusers 0.42.1) with random weights (its 1-D parameters,
constant at initialisation, perturbed so that no two are alike), written with `save_pretrained`
and read back with `ddim.load`. Relative errors are max|ours − theirs| / max|theirs|.

Tolerances, and why:
- One forward pass, float32: the two nets do the same arithmetic in a different order (SDPA vs
  diffusers' baddbmm attention, reshapes). Measured ≤ 1.4e-6 (full CIFAR-10 config, 3 seeds)
  and ≤ 1.1e-6 (small config, 5 seeds); the issue asks ≤ 1e-5.
- DDIM trajectories, float32, relative per step (max over steps of max|Δx_k| / max|x_k|): each
  loop feeds its own x_t to the net, so forward-pass rounding is carried along; diffusers also
  keeps ᾱ_t in float32 (we use float64) and, for x0-prediction, recovers ε̂ through 1 − ᾱ_t
  formed in float32, which loses digits near t = 0 (see test_reference_diffusers). Measured:
  eps and v ≤ 1.1e-6, x0 ≤ 1.1e-5 (S = 50); full CIFAR-10 U-Net at S = 10: 3.2e-7.
  Tolerance 1e-5 (x0: 5e-5). Measured on the same nets at S = 10, diffusers' steps_offset=1
  moves them by ≥ 9.7e-3 and set_alpha_to_one=False by ≥ 8.1e-5 (eps; x̂_0 of a random net is
  large, so the last step's √(1 − ᾱ_0) ε̂ term is relatively small).
"""

from __future__ import annotations

import json
import re

import pytest
import safetensors.torch
import torch
from benchmarks.vs_diffusers import DDPM_CIFAR10_32, SMALL
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

import ddim
from ddim.checkpoint import CheckpointError
from ddim.convert.diffusers import config_from_diffusers
from ddim.convert.official import KNOWN
from ddim.models.unet import UNetConfig
from helpers import PREDICTION_TYPE, perturb_vectors, run_cli, run_diffusers

# google/ddpm-church-256 (and ddpm-celebahq-256): config.json as quoted by fine-tuned copies on the Hub
DDPM_CHURCH_256 = {**DDPM_CIFAR10_32, "sample_size": 256,
                   "block_out_channels": [128, 128, 256, 256, 512, 512],
                   "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
                   "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4}  # fmt: skip
# google/ncsnpp-church-256: a score-SDE model stored as a UNet2DModel (the fields that differ)
NCSNPP_CHURCH_256 = {**DDPM_CHURCH_256, "time_embedding_type": "fourier", "flip_sin_to_cos": True,
                     "freq_shift": 0, "center_input_sample": True, "downsample_padding": 1}  # fmt: skip
FORWARD_RTOL = 1e-5
TRAJECTORY_RTOL = {"eps": 1e-5, "v": 1e-5, "x0": 5e-5}  # per step


def unet2d(config: dict, seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    net = UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    return perturb_vectors(net)


def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def forward_err(net: UNet2DModel, model: ddim.Model, n: int = 3, seed: int = 1) -> float:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *model.image_shape, generator=g)
    t = torch.tensor([0, 999, *torch.randint(0, 1000, (n - 2,), generator=g).tolist()])
    with torch.no_grad():
        return rel_err(model.net(x, t), net(x, t).sample)


def write_config(folder, config: dict, name: str = "config.json") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(config))


# --- the same network -----------------------------------------------------------------------


def test_ddpm_cifar10_32_config_gives_the_same_outputs(tmp_path):
    net = unet2d(DDPM_CIFAR10_32)
    net.save_pretrained(tmp_path / "unet")
    model = ddim.load(tmp_path / "unet")
    assert model.num_parameters == sum(p.numel() for p in net.parameters()) == 35_746_307
    assert model.net.config == UNetConfig(dropout=0.0)  # DDPM's CIFAR-10 U-Net
    assert forward_err(net, model, n=4) <= FORWARD_RTOL


@pytest.mark.parametrize("layout", ["unet-folder", "pipeline", "flat-pipeline", "bin", "deprecated-names"])
def test_every_folder_layout_loads_the_same_network(tmp_path, layout):
    net = unet2d(SMALL, seed=2)
    scheduler = DDPMScheduler(num_train_timesteps=500, beta_end=0.03, prediction_type="v_prediction")
    index = {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
             "scheduler": ["diffusers", "DDPMScheduler"]}  # fmt: skip
    root = tmp_path / "model"
    if layout == "flat-pipeline":  # google/ddpm-cifar10-32: every file in one folder
        net.save_pretrained(root)
        scheduler.save_pretrained(root)
        write_config(root, index, "model_index.json")
        unet_dir = root
    else:
        unet_dir = root / "unet"
        net.save_pretrained(unet_dir, safe_serialization=layout != "bin")
        scheduler.save_pretrained(root / "scheduler")
        if layout == "pipeline":
            write_config(root, index, "model_index.json")
        else:
            root = unet_dir  # the UNet folder itself; the scheduler is its sibling
    if layout == "deprecated-names":  # the attention names of diffusers < 0.15 checkpoints
        file = unet_dir / "diffusion_pytorch_model.safetensors"
        old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        state = safetensors.torch.load_file(file)
        for new, name in old.items():
            state = {k.replace(f".{new}.", f".{name}."): v for k, v in state.items()}
        assert any(".proj_attn." in k for k in state)
        safetensors.torch.save_file(state, file)
        reloaded = UNet2DModel.from_pretrained(unet_dir).state_dict()  # diffusers renames them back
        assert all(torch.equal(v, reloaded[k]) for k, v in net.state_dict().items())

    model = ddim.load(root)
    assert forward_err(net, model) <= FORWARD_RTOL
    assert (model.schedule.num_timesteps, model.prediction) == (500, "v")
    torch.testing.assert_close(model.schedule.betas, scheduler.betas.double(), rtol=1e-6, atol=0)
    assert model.info["format"] == "diffusers"


def test_without_a_scheduler_config_the_ddpm_defaults_are_assumed_and_said(tmp_path):
    unet2d(SMALL).save_pretrained(tmp_path / "unet")
    model = ddim.load(tmp_path / "unet")
    assert model.info["schedule"].startswith("assumed")
    torch.testing.assert_close(model.schedule.betas, DDPMScheduler().betas.double(), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("scheduler_class", "scheduler_config"),
    [
        (
            DDPMScheduler,
            {"beta_schedule": "linear", "beta_start": 2e-4, "beta_end": 0.03, "num_train_timesteps": 400},
        ),
        (DDIMScheduler, {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}),
        (DDIMScheduler, {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 300}),
        (
            DDPMScheduler,
            {"trained_betas": torch.linspace(1e-3, 0.05, 200).tolist(), "num_train_timesteps": 200},
        ),
    ],
)
def test_schedules_equal_diffusers_betas(tmp_path, scheduler_class, scheduler_config):
    scheduler = scheduler_class(**scheduler_config)
    unet2d(SMALL).save_pretrained(tmp_path / "unet")
    scheduler.save_pretrained(tmp_path / "scheduler")
    ours = ddim.load(tmp_path / "unet").schedule
    # diffusers builds β in float32 (2 ulp); its cosine goes through float64 like ours
    torch.testing.assert_close(ours.betas, scheduler.betas.double(), rtol=5e-7, atol=0)


def test_pre_release_scheduler_config_of_ddpm_cifar10_32(tmp_path):
    # the scheduler_config.json google/ddpm-cifar10-32 shipped first: "timesteps", not num_train_timesteps
    unet2d(SMALL).save_pretrained(tmp_path)
    old = {"_class_name": "GaussianDDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear",
           "beta_start": 0.0001, "timesteps": 1000, "variance_type": "fixed_large"}  # fmt: skip
    write_config(tmp_path, old, "scheduler_config.json")
    model = ddim.load(tmp_path)
    assert model.schedule.num_timesteps == 1000
    assert model.info["schedule"] == f"from {tmp_path / 'scheduler_config.json'}"


def test_published_256_configs(tmp_path):
    # the diffusers church/celebahq models are the official LSUN-256 architecture; NCSN++ is refused
    assert config_from_diffusers(DDPM_CHURCH_256, tmp_path) == KNOWN["lsun256"]
    with pytest.raises(CheckpointError, match="unsupported time_embedding_type='fourier'"):
        config_from_diffusers(NCSNPP_CHURCH_256, tmp_path)


# --- the same DDIM trajectories -------------------------------------------------------------


def ddim_trajectories(config: dict, steps: int, prediction: str, tmp_path, n: int = 2):
    """(ours, diffusers') x_t after every DDIM step, η = 0, uniform = leading spacing."""
    net = unet2d(config, seed=3)
    net.save_pretrained(tmp_path / "unet")
    DDPMScheduler(prediction_type=PREDICTION_TYPE[prediction]).save_pretrained(tmp_path / "scheduler")
    model = ddim.load(tmp_path / "unet")
    x_T = torch.randn(n, *model.image_shape, generator=torch.Generator().manual_seed(4))
    _, traj = ddim.sample(model, noise=x_T, steps=steps, eta=0.0, spacing="uniform", return_trajectory=True)

    scheduler = DDIMScheduler.from_pretrained(tmp_path / "scheduler")
    scheduler = DDIMScheduler.from_config(
        scheduler.config, clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading"
    )
    with torch.no_grad():
        ts, xs, _ = run_diffusers(scheduler, lambda x, t: net(x, t).sample, x_T, steps)
    torch.testing.assert_close(traj.timesteps[:-1], ts)
    return traj.xt[1:], xs


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddim_trajectory_equals_diffusers_ddim_scheduler(tmp_path, steps, prediction):
    ours, theirs = ddim_trajectories(SMALL, steps, prediction, tmp_path)
    assert max(map(rel_err, ours, theirs)) <= TRAJECTORY_RTOL[prediction]


def test_ddim_trajectory_equals_diffusers_on_the_full_cifar10_unet(tmp_path):
    ours, theirs = ddim_trajectories(DDPM_CIFAR10_32, 10, "eps", tmp_path, n=1)
    assert max(map(rel_err, ours, theirs)) <= TRAJECTORY_RTOL["eps"]


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"act_fn": "gelu"}, "unsupported act_fn='gelu'"),
        ({"resnet_time_scale_shift": "scale_shift"}, "unsupported resnet_time_scale_shift='scale_shift'"),
        ({"time_embedding_type": "fourier"}, "unsupported time_embedding_type='fourier'"),
        ({"flip_sin_to_cos": True}, "unsupported flip_sin_to_cos=True"),
        ({"flip_sin_to_cos": None}, "unsupported flip_sin_to_cos=True"),  # absent: the default
        ({"freq_shift": 0}, "unsupported freq_shift=0"),
        ({"class_embed_type": "timestep"}, "unsupported class_embed_type='timestep'"),
        ({"num_class_embeds": 10}, "unsupported num_class_embeds=10"),
        ({"attention_head_dim": 8}, "unsupported attention_head_dim=8"),
        ({"norm_eps": 1e-5}, "unsupported norm_eps=1e-05"),
        ({"downsample_padding": 1}, "unsupported downsample_padding=1"),
        ({"center_input_sample": True}, "unsupported center_input_sample=True"),
        ({"mid_block_scale_factor": 2}, "unsupported mid_block_scale_factor=2"),
        ({"add_attention": False}, "unsupported add_attention=False"),
        ({"attn_norm_num_groups": 4}, "unsupported attn_norm_num_groups=4"),
        ({"block_out_channels": [16, 24, 32, 32]}, "unsupported block_out_channels"),
        ({"block_out_channels": [0, 32, 32, 32]}, "unsupported block_out_channels"),
        ({"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"]},
         "unsupported down_block_types"),
        ({"up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]},
         "unsupported up_block_types=['UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D', 'UpBlock2D']; "
         "allowed: attention at the same levels as down_block_types"),
        ({"sample_size": [16, 32]}, "unsupported sample_size"),
        ({"block_out_channels": 5}, "unsupported block_out_channels=5; allowed: a list"),  # issue 24
        ({"up_block_types": "UpBlock2D"}, "unsupported up_block_types='UpBlock2D'; allowed: a list"),
        ({"act_fn": {"name": "silu"}}, "unsupported act_fn={'name': 'silu'}; allowed: 'silu' or 'swish'"),
        ({"cross_attention_dim": 768}, "unknown UNet2DModel field(s) ['cross_attention_dim']"),
        ({"_class_name": "UNet2DConditionModel"}, "unsupported _class_name='UNet2DConditionModel'"),
    ],
)  # fmt: skip
def test_configs_that_change_the_computation_are_refused(tmp_path, edit, message):
    config = {**SMALL, **edit}
    config = {k: v for k, v in config.items() if v is not None or k not in edit}  # None: field absent
    write_config(tmp_path, config)
    with pytest.raises(CheckpointError, match="config.json: " + re.escape(message)):
        ddim.load(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"prediction_type": "flow"}, "unsupported prediction_type='flow'"),
        ({"beta_schedule": "sigmoid"}, "unsupported beta_schedule='sigmoid'"),
        ({"rescale_betas_zero_snr": True}, "unsupported rescale_betas_zero_snr=True"),
        ({"_class_name": "ScoreSdeVeScheduler"}, "unsupported _class_name='ScoreSdeVeScheduler'"),
        ({"beta_end": 1.5}, "need 0 < beta_start <= beta_end < 1"),
        ({"prediction_type": ["epsilon"]}, re.escape("a field has the wrong type (unhashable type: 'list')")),
    ],
)
def test_scheduler_configs_we_cannot_follow_are_refused(tmp_path, edit, message):
    unet2d(SMALL).save_pretrained(tmp_path / "unet")
    write_config(tmp_path / "scheduler", {**DDPMScheduler().config, **edit}, "scheduler_config.json")
    with pytest.raises(CheckpointError, match="scheduler_config.json: " + message):
        ddim.load(tmp_path / "unet")


def _edit_weights(folder, edit) -> None:
    file = folder / "diffusion_pytorch_model.safetensors"
    state = safetensors.torch.load_file(file)
    edit(state)
    safetensors.torch.save_file(state, file)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("mid_block.attentions.0.to_k.bias"),
         r"missing \['mid_block.attentions.0.to_k.bias'\]"),
        (lambda s: s.update(extra=torch.zeros(1)), r"missing \[\], unexpected \['extra'\]"),
        (lambda s: s.update({"up_blocks.2.attentions.0.to_q.weight": torch.zeros(32, 31)}),
         r"up_blocks.2.attentions.0.to_q.weight has shape \(32, 31\), the architecture needs \(32, 32\)"),
        (lambda s: s["conv_in.bias"].fill_(float("nan")), "conv_in.bias holds NaN"),
    ],
)  # fmt: skip
def test_weights_that_do_not_fit_are_refused_by_their_diffusers_names(tmp_path, capsys, edit, message):
    unet2d(SMALL).save_pretrained(tmp_path)
    _edit_weights(tmp_path, edit)
    with pytest.raises(CheckpointError, match=message):
        ddim.load(tmp_path)
    code, _, err = run_cli(capsys, "convert", tmp_path, "--out", tmp_path / "out.safetensors")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.safetensors").exists()


def test_a_folder_without_weights_or_config(tmp_path):
    write_config(tmp_path, SMALL)
    with pytest.raises(CheckpointError, match=r"has no diffusion_pytorch_model\.safetensors or "):
        ddim.load(tmp_path)
    write_config(tmp_path / "pipe", {"vae": ["diffusers", "AutoencoderKL"]}, "model_index.json")
    with pytest.raises(CheckpointError, match=r"names no UNet2DModel component \(found \{'vae'"):
        ddim.load(tmp_path / "pipe")
    write_config(tmp_path / "pipe", {"unet": ["diffusers", "UNet2DModel"]}, "model_index.json")
    with pytest.raises(CheckpointError, match=r"pipe has no config\.json"):
        ddim.load(tmp_path / "pipe")


def test_unreadable_files_in_a_folder(tmp_path):
    write_config(tmp_path, SMALL)
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        ddim.load(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    torch.save([torch.zeros(1)], tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="does not hold a state_dict"):
        ddim.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is not readable JSON"):
        ddim.load(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config\.json is not a JSON object"):
        ddim.load(tmp_path)


# --- the command line -------------------------------------------------------------------------


def test_convert_and_info_through_the_command_line(tmp_path, capsys):
    net = unet2d(SMALL)
    net.save_pretrained(tmp_path / "unet")
    code, out, _ = run_cli(capsys, "info", tmp_path / "unet", "--json")
    assert code == 0
    assert json.loads(out)["format"] == "diffusers UNet2DModel folder"

    target = tmp_path / "small.safetensors"
    code, out, _ = run_cli(capsys, "convert", tmp_path / "unet", "--out", target)
    assert code == 0
    assert "diffusers UNet2DModel folder" in out
    native = ddim.load(target)
    assert native.info["format"] == "diffusers"  # provenance travels with the weights
    assert forward_err(net, native) <= FORWARD_RTOL
    code, out, _ = run_cli(capsys, "info", target)
    assert "native ddim checkpoint" in out
    code, _, _ = run_cli(capsys, "sample", "--model", tmp_path / "unet", "--n", 2, "--steps", 3,
                         "--out", tmp_path / "s.png", "--quiet")  # fmt: skip
    assert code == 0
    assert (tmp_path / "s.png").is_file()
    for argv, message in [
        (
            ["--resolution", "16", "--out", tmp_path / "b.safetensors"],
            "resolution is only for official checkpoints",
        ),
        (["--out", tmp_path / "b.pt"], "--out must end in .safetensors, got b.pt"),
    ]:
        code, _, err = run_cli(capsys, "convert", tmp_path / "unet", *argv)
        assert code == 2
        assert message in err
