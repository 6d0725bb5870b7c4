"""Training: the loss and EMA against closed forms, exact resume, and runs that fail safely."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import ddim
from ddim.models.unet import UNet
from ddim.train_config import TrainConfig, apply_assignments, load_toml, to_toml
from ddim.training import TrainingError, batch_indices, diffusion_loss, ema_update, train
from helpers import MNIST, assert_same_run, needs_mnist, random_images, run_cli

TINY_NET = {"resolution": 8, "in_channels": 1, "out_channels": 1, "ch": 8, "ch_mult": [1, 2],
            "num_res_blocks": 1, "attn_resolutions": [4], "dropout": 0.1, "norm_groups": 4}  # fmt: skip


@pytest.fixture
def dataset(tmp_path):
    return random_images(tmp_path / "data.npz")


def tiny_config(dataset, **overrides) -> TrainConfig:
    settings = {"data": str(dataset), "net": TINY_NET, "steps": 6, "batch_size": 8, "warmup_steps": 2,
                "log_every": 1, "checkpoint_every": 3, "sample_every": 3, "sample_n": 4, "sample_steps": 3,
                "num_timesteps": 50, **overrides}  # fmt: skip
    return TrainConfig.from_dict(settings)


def test_loss_is_zero_for_the_true_noise_and_mean_square_for_zero():
    schedule = ddim.NoiseSchedule.linear(100)
    x0, eps = torch.rand(4, 1, 5, 5) * 2 - 1, torch.randn(4, 1, 5, 5)
    t = torch.tensor([0, 10, 50, 99])

    def oracle(x_t, t):  # knows x0: ε = (x_t − √ᾱ x0) / √(1 − ᾱ), DDPM eq. 4 solved for ε
        a = schedule.alpha_bar_at(t).float().view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    assert diffusion_loss(oracle, x0, t, eps, schedule, autocast=False).item() == pytest.approx(0, abs=1e-10)
    zero = diffusion_loss(lambda x, t: torch.zeros_like(x), x0, t, eps, schedule, autocast=False)
    assert zero.item() == pytest.approx(eps.pow(2).mean().item(), rel=1e-6)


def test_ema_update_is_the_geometric_average():
    net, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    start = ema.weight.detach().clone()
    for _ in range(5):
        ema_update(ema, net, 0.9)
    expected = net.weight + 0.9**5 * (start - net.weight)  # e_k = p + d^k (e_0 − p)
    torch.testing.assert_close(ema.weight, expected, rtol=1e-6, atol=1e-7)


def test_learning_rate_and_ema_schedules():
    c = TrainConfig(warmup_steps=10, steps=110, lr=1e-3, min_lr=1e-5, ema_decay=0.999)
    assert c.lr_at(0) == pytest.approx(1e-4)
    assert c.lr_at(9) == pytest.approx(1e-3)
    assert c.lr_at(10) == pytest.approx(1e-3)
    assert c.lr_at(60) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)  # half-way down the cosine
    assert c.lr_at(110) == pytest.approx(1e-5)
    assert c.replace(lr_decay="constant").lr_at(100) == 1e-3
    assert c.ema_decay_at(0) == pytest.approx(0.1)
    assert c.ema_decay_at(10**6) == 0.999


def test_each_epoch_visits_every_image_once():
    n, b = 23, 5  # 4 batches an epoch, 3 images dropped
    epoch0 = torch.cat([batch_indices(n, b, seed=1, step=s) for s in range(4)])
    epoch1 = torch.cat([batch_indices(n, b, seed=1, step=s) for s in range(4, 8)])
    assert len(set(epoch0.tolist())) == 20
    assert len(set(epoch1.tolist())) == 20
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(batch_indices(n, b, seed=1, step=6), batch_indices(n, b, seed=1, step=6))
    assert not torch.equal(batch_indices(n, b, seed=2, step=0), batch_indices(n, b, seed=1, step=0))


def test_resume_continues_exactly(tmp_path, dataset):
    """6 steps in one go == 3 steps, stop, resume to 6: same weights, EMA, optimizer and log."""
    config = tiny_config(dataset, hflip=True)  # flips and dropout draw randomness too
    whole = train(config, tmp_path / "whole", progress=False)
    train(config.replace(steps=3), tmp_path / "split", progress=False)
    resumed = train(config, tmp_path / "split", resume=True, progress=False)
    assert (whole.step, resumed.step) == (6, 6)
    assert_same_run(whole.checkpoint, resumed.checkpoint)
    logs = [r.checkpoint.parents[1] / "metrics.jsonl" for r in (whole, resumed)]
    losses = [[json.loads(line)["loss"] for line in p.read_text().splitlines()] for p in logs]
    assert losses[0] == losses[1]
    assert len(losses[0]) == 6


def test_run_folder_contents_and_the_model_it_ships(tmp_path, dataset):
    config = tiny_config(dataset, keep_checkpoints=1)
    train(config, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000006.safetensors", "step-00000006.state.pt"]  # fmt: skip
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-00000003.png", "step-00000006.png"]
    assert (run / "loss.png").stat().st_size > 1000
    assert TrainConfig.from_dict(load_toml(run / "config.toml")) == config
    model = ddim.load(run / "model.safetensors")
    assert model.info["step"] == 6
    assert TrainConfig.from_dict(model.info["training"]) == config
    assert model.image_shape == (1, 8, 8)
    assert ddim.sample(model, 2, steps=3).shape == (2, 1, 8, 8)


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, dataset, monkeypatch):
    import ddim.training as training

    calls = []
    real = training.diffusion_loss

    def failing(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(training, "diffusion_loss", failing)
    with pytest.raises(
        TrainingError, match=r"loss became nan .* at step 5; the last good checkpoint is .*step-00000003"
    ):
        train(tiny_config(dataset), tmp_path / "run", progress=False)
    good = tmp_path / "run" / "checkpoints" / "step-00000003.safetensors"
    model = ddim.load(good)  # intact, finite
    assert model.info["step"] == 3
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_config_files_flags_and_toml_round_trip(tmp_path):
    config = TrainConfig(data="x.npz", lr=3e-4, hflip=True)
    (tmp_path / "c.toml").write_text(to_toml(config.to_dict()))
    assert TrainConfig.from_dict(load_toml(tmp_path / "c.toml")) == config
    settings = apply_assignments(
        config.to_dict(), ["net.ch=64", "net.ch_mult=[1, 2]", "net.attn_resolutions=[]", "fit=resize"]
    )
    changed = TrainConfig.from_dict(settings)
    assert (changed.net.ch, changed.net.ch_mult, changed.fit) == (64, (1, 2), "resize")
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainConfig.from_dict({"learning_rate": 1})
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match=r"unet\.ch"):
        TrainConfig.from_dict({"net": {"ch": 7}})


def test_cli_refuses_bad_runs_in_one_line(tmp_path, dataset, capsys):
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(to_toml(tiny_config(dataset).to_dict()))
    cases = [
        (["--data", tmp_path / "missing.npz"], "no such dataset"),
        (["--config", tmp_path / "missing.toml"], "cannot read config"),
        (["--set", "lr=-1"], "need lr > 0"),
        (["--set", "oops"], "expected KEY=VALUE"),
        (["--set", "net.ch_mult=[1,2,2,2,2]"], "divisible"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(capsys, "train", "--config", config_file, "--out", tmp_path / "r", *extra)
        assert code == 2, err
        assert message in err
        assert err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_cli_never_overwrites_a_run_and_resume_checks_settings(tmp_path, dataset, capsys):
    out = tmp_path / "run"
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(to_toml(tiny_config(dataset).to_dict()))
    code, _, err = run_cli(capsys, "train", "--config", config_file, "--out", out, "--quiet")
    assert code == 0, err
    before = (out / "model.safetensors").read_bytes()
    code, _, err = run_cli(capsys, "train", "--config", config_file, "--out", out, "--quiet")
    assert code == 2
    assert "already holds a training run" in err
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--lr", "0.5", "--quiet")
    assert code == 2
    assert "cannot resume" in err
    assert "lr=0.5" in err
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--config", config_file, "--quiet")
    assert (code, err.count("\n")) == (2, 1)
    assert "--config does not apply to --resume" in err
    for steps in (tiny_config(dataset).steps, 1):  # a finished run, or steps it has passed
        code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--steps", steps, "--quiet")
        assert (code, err.count("\n")) == (2, 1)
        assert f"steps={steps}: nothing to train" in err
    assert (out / "model.safetensors").read_bytes() == before
    assert (out / "config.toml").read_text() == config_file.read_text()
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--steps", "8", "--quiet")
    assert code == 0, err
    assert ddim.load(out / "model.safetensors").info["step"] == 8


def test_resume_drops_a_log_line_cut_short_and_names_a_damaged_one(tmp_path, dataset, capsys):
    """A run killed while appending to metrics.jsonl leaves half a line: resume drops it."""
    out = tmp_path / "run"
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(to_toml(tiny_config(dataset, steps=3, sample_every=0).to_dict()))
    assert run_cli(capsys, "train", "--config", config_file, "--out", out, "--quiet")[0] == 0
    log = out / "metrics.jsonl"
    whole = log.read_text()
    log.write_text(whole + '{"step": 4, "lo')
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--steps", "4", "--quiet")
    assert code == 0, err
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]
    log.write_text("{oops\n" + whole)
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--steps", "5", "--quiet")
    assert code == 2
    assert err.strip().endswith(f"{log}: line 1 is not JSON (Expecting property name enclosed in double "
                                "quotes: line 1 column 2 (char 1))")  # fmt: skip
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_saves_and_exits_cleanly(tmp_path, dataset, stop):
    config = tmp_path / "c.toml"
    config.write_text(
        to_toml(tiny_config(dataset, steps=100000, checkpoint_every=100000, sample_every=0).to_dict())
    )
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "ddim", "train", "--config", str(config), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    log = out / "metrics.jsonl"
    while not log.exists() or log.stat().st_size < 200:  # a few steps done
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(stop)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted at step" in stdout
    model = ddim.load(out / "checkpoints" / next(p.name for p in (out / "checkpoints").glob("*.safetensors")))
    step = model.info["step"]
    assert step >= 2
    assert math.isfinite(sum(v.sum().item() for v in model.net.state_dict().values()))
    assert not (out / "model.safetensors").exists()  # training was not complete


@needs_mnist
def test_cli_stop_and_resume_on_real_mnist_matches_an_uninterrupted_run(tmp_path, capsys):
    """Through the real command on MNIST: 3 steps, stop, resume to 6 == 6 steps in one go."""
    tiny = ["--set", "net.ch=8", "--set", "net.norm_groups=4", "--set", "net.ch_mult=[1, 2]",
            "--set", "net.attn_resolutions=[14]", "--set", "net.dropout=0.1", "--set", "hflip=true",
            "--set", "log_every=1", "--set", "sample_every=0", "--batch-size", "8", "--quiet"]  # fmt: skip
    code, _, err = run_cli(capsys, "train", "--data", MNIST, "--out", tmp_path / "whole", "--steps", 6, *tiny)
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--data", MNIST, "--out", tmp_path / "split", "--steps", 3, *tiny)
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "split", "--resume", "--steps", 6, "--quiet")
    assert code == 0, err
    logs = [[json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
            for r in ("whole", "split")]  # fmt: skip
    assert [r["step"] for r in logs[1]] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([r["loss"] for r in logs[1]], [r["loss"] for r in logs[0]], rtol=1e-6)
    a, b = (load_file(tmp_path / r / "model.safetensors") for r in ("whole", "split"))
    assert all(torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-7) for k in a)


def test_cli_bad_data_names_the_file(tmp_path, capsys):
    (tmp_path / "mixed").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "mixed" / "a.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "mixed" / "b.png")
    (tmp_path / "corrupt").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "corrupt" / "a.png")
    (tmp_path / "corrupt" / "b.png").write_bytes(b"\x89PNG truncated")
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 8, 8), np.uint8))
    cases = [
        (tmp_path / "nope.npz", "no such dataset: " + str(tmp_path / "nope.npz")),
        (tmp_path / "d.npz", f"{tmp_path / 'd.npz'} has no array 'x_train' (it has: images)"),
        (tmp_path / "mixed", f"{tmp_path / 'mixed' / 'b.png'}: images of 40×40 do not fit in 28×28"),
        (tmp_path / "corrupt", f"{tmp_path / 'corrupt' / 'b.png'}: cannot read this image"),
    ]
    for data, message in cases:
        code, _, err = run_cli(capsys, "train", "--data", data, "--out", tmp_path / "r", "--quiet")
        assert code == 2
        assert message in err
        assert err.count("\n") == 1


@pytest.mark.parametrize("name", ["mnist", "mnist-cond", "cifar10"])
def test_shipped_recipes_parse(name, capsys):
    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.toml"
    config = TrainConfig.from_dict(load_toml(path))
    if name == "mnist":
        assert config == TrainConfig()  # the file is the defaults, written out
    elif name == "mnist-cond":  # mnist's recipe with the ten digits' labels and label dropout 0.2
        net = dataclasses.replace(TrainConfig().net, num_classes=10)
        assert config == TrainConfig(conditional=True, class_dropout=0.2, net=net)
    else:
        assert sum(p.numel() for p in UNet(config.net).parameters()) == 35_746_307
    code, out, err = run_cli(capsys, "train", "--config", path, "--data", "x.npz", "--out", "r", "--dry-run")
    assert code == 0, err
    assert json.loads(out)["net"]["ch"] == config.net.ch


@pytest.fixture
def labelled(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "labelled.npz"
    np.savez(path, x_train=rng.integers(0, 256, size=(40, 8, 8), dtype=np.uint8),
             y_train=rng.integers(0, 4, size=40, dtype=np.int64))  # fmt: skip
    return path


def test_defaults_are_unconditional():
    config = TrainConfig()
    assert (config.conditional, config.net.num_classes, config.class_dropout) == (False, None, 0.1)
    with pytest.raises(ValueError, match=r"net\.num_classes = 4 is for conditional runs"):
        TrainConfig.from_dict({"net": {"num_classes": 4}})
    with pytest.raises(ValueError, match="class_dropout"):
        TrainConfig(class_dropout=1.0)


def test_conditional_resume_continues_exactly(tmp_path, labelled):
    """Label dropout is a function of (seed, step) too: 3 steps, stop, resume == 6 in one go."""
    config = tiny_config(labelled, conditional=True, class_dropout=0.5)
    whole = train(config, tmp_path / "whole", progress=False)
    train(config.replace(steps=3), tmp_path / "split", progress=False)
    resumed = train(config, tmp_path / "split", resume=True, progress=False)
    a, b = load_file(whole.checkpoint), load_file(resumed.checkpoint)
    assert "net.class_embedding.weight" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
    model = ddim.load(tmp_path / "whole" / "model.safetensors")
    assert (model.num_classes, model.class_names) == (4, ("0", "1", "2", "3"))
    saved = TrainConfig.from_dict(load_toml(tmp_path / "whole" / "config.toml"))
    assert (saved.conditional, saved.net.num_classes) == (True, 4)  # the resolved config
    assert ddim.sample(model, 2, steps=2, classes=[3, 1], guidance=2).shape == (2, 1, 8, 8)


def test_labels_follow_their_images_and_are_dropped_to_the_null_class(tmp_path, labelled, monkeypatch):
    import ddim.training as training

    seen = []
    real = training.diffusion_loss
    monkeypatch.setattr(training, "diffusion_loss", lambda *a, **k: seen.append(a[-1]) or real(*a, **k))
    config = tiny_config(labelled, conditional=True, class_dropout=0.3, steps=10, sample_every=0)
    train(config, tmp_path / "run", progress=False)
    labels = torch.from_numpy(np.load(labelled)["y_train"])
    dropped = 0
    for step, y in enumerate(seen):
        true = labels[batch_indices(40, 8, config.seed, step)]
        kept = y != 4  # 4: the null class
        assert torch.equal(y[kept], true[kept])
        dropped += int((~kept).sum())
    assert 0.1 < dropped / 80 < 0.5  # 30 % of 80 labels expected (binomial s.d. 5 %)


def test_cli_trains_a_conditional_model_from_class_folders(tmp_path, capsys):
    rng = np.random.default_rng(2)
    for i in range(16):
        name = ("cat", "dog")[i % 2]
        (tmp_path / "pets" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
            tmp_path / "pets" / name / f"{i}.png"
        )
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(to_toml(tiny_config(tmp_path / "pets", sample_every=0).to_dict()))
    base = ["train", "--config", config_file, "--quiet"]
    code, _, err = run_cli(capsys, *base, "--out", tmp_path / "r", "--conditional", "--class-dropout", 0.2)
    assert code == 0, err
    model = ddim.load(tmp_path / "r" / "model.safetensors")
    assert (model.num_classes, model.class_names) == (2, ("cat", "dog"))
    assert model.info["training"]["class_dropout"] == 0.2
    code, _, err = run_cli(capsys, "sample", "--model", tmp_path / "r" / "model.safetensors", "--class",
                           "dog,cat", "--steps", 2, "--out", tmp_path / "s.png", "--quiet")  # fmt: skip
    assert code == 0, err
    np.savez(tmp_path / "unlabelled.npz", x_train=rng.integers(0, 256, (16, 8, 8), dtype=np.uint8))
    cases = [
        (
            ["--conditional", "--data", tmp_path / "unlabelled.npz"],
            "has no array 'y_train' (it has: x_train)",
        ),
        (["--conditional", "--set", "net.num_classes=3"], "net.num_classes = 3, but"),
        (["--set", "net.num_classes=2"], "is for conditional runs: set conditional = true"),
        (["--conditional", "--class-dropout", "1.5"], "class_dropout must be in [0, 1)"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(capsys, *base, "--out", tmp_path / "bad", *extra)
        assert code == 2, err
        assert message in err
        assert err.count("\n") == 1
    assert not (tmp_path / "bad").exists()
