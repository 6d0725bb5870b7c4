"""Warm starts (`train(init=...)`, `ddim train --init`): the init weights are loaded exactly, a
different architecture is refused, the schedule continues (with its re-warm-up) by the closed
form, and a warm-started run resumes bit for bit like any other."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import ddim
from ddim.models import Model
from ddim.train_config import TrainConfig, load_toml, to_toml
from ddim.training import train
from helpers import assert_same_run, random_images, run_cli
from test_training import tiny_config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return random_images(tmp_path_factory.mktemp("data") / "data.npz")


def config_of(dataset, **overrides) -> TrainConfig:
    """12 steps, a constant rate after a 4-step warm-up (a rate that does not depend on `steps`)."""
    settings = {"steps": 12, "warmup_steps": 4, "lr_decay": "constant", "hflip": True, "sample_every": 0}
    return tiny_config(dataset, **{**settings, **overrides})


@pytest.fixture(scope="module")
def first(tmp_path_factory, dataset):
    """A 12-step run; its step-6 checkpoint is the init model of the tests (left unchanged)."""
    run = tmp_path_factory.mktemp("first")
    train(config_of(dataset), run, progress=False)
    return run / "checkpoints" / "step-00000006.safetensors"


def log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_run_starts_from_the_init_weights(tmp_path, dataset, first, monkeypatch):
    """With the rate at 0 the network never moves, so the EMA stays the init weights bit for bit:
    here the float16-stored copy of the step-6 model (`ddim.save(..., dtype=torch.float16)`), cast
    to float32."""
    half = tmp_path / "half.safetensors"
    ddim.save(ddim.load(first), half, dtype=torch.float16)
    monkeypatch.setattr(TrainConfig, "lr_at", lambda self, step: 0.0)
    result = train(config_of(dataset), tmp_path / "warm", init=half, progress=False)
    init = {k: v.float() for k, v in load_file(half).items() if k.startswith("net.")}
    ema = load_file(tmp_path / "warm" / "checkpoints" / "step-00000009.safetensors")
    assert all(ema[k].dtype == torch.float32 and torch.equal(ema[k], init[k]) for k in init)
    state = torch.load(result.checkpoint.with_suffix(".state.pt"), weights_only=True)
    assert all(torch.equal(state["net"][k], init[f"net.{k}"]) for k in state["net"])
    assert any(not torch.equal(init[k], load_file(first)[k]) for k in init)  # float16 rounding


def test_the_schedule_continues_from_the_step_the_model_records(tmp_path, dataset, first):
    config = config_of(dataset)
    train(config, tmp_path / "warm", init=first, progress=False)
    saved = TrainConfig.from_dict(load_toml(tmp_path / "warm" / "config.toml"))
    assert (saved.init, saved.init_step) == (str(first), 6)
    assert saved.init_fingerprint == ddim.load(first).fingerprint()
    records = log(tmp_path / "warm")
    assert [r["step"] for r in records] == [7, 8, 9, 10, 11, 12]
    # re-warm-up over warmup_steps = 4 from step 6: lr · (step − 6 + 1) / 4, then lr
    assert [r["lr"] for r in records] == pytest.approx([1e-3 * k / 4 for k in (1, 2, 3, 4, 4, 4)], rel=1e-12)
    assert records[0]["wall_time_s"] >= ddim.load(first).info["wall_time_s"]  # the wall time goes on
    model = ddim.load(tmp_path / "warm" / "model.safetensors")
    assert model.info["step"] == 12
    assert model.info["training"]["init_step"] == 6  # what a model card states


def test_lr_at_re_warms_a_warm_start_by_the_closed_form():
    fresh = TrainConfig(warmup_steps=10, steps=110, lr=1e-3, min_lr=1e-5)
    warm = fresh.replace(init="m", init_fingerprint="0" * 40, init_step=50)

    def cosine(step):  # the schedule's own value: cosine from lr to min_lr over steps 10..110
        return 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (step - 10) / 100))

    assert warm.lr_at(50) == pytest.approx(cosine(50) * 1 / 10, rel=1e-12)
    assert warm.lr_at(54) == pytest.approx(cosine(54) * 5 / 10, rel=1e-12)
    assert warm.lr_at(59) == pytest.approx(cosine(59), rel=1e-12)
    assert warm.lr_at(80) == fresh.lr_at(80)
    early = fresh.replace(init="m", init_fingerprint="0" * 40, init_step=4)  # inside the first warm-up
    assert early.lr_at(5) == pytest.approx(1e-3 * 6 / 10 * 2 / 10, rel=1e-12)
    restart = fresh.replace(init="m", init_fingerprint="0" * 40, init_step=0)  # the warm-up is the re-warm-up
    assert [restart.lr_at(s) for s in range(20)] == [fresh.lr_at(s) for s in range(20)]
    assert warm.ema_decay_at(50) == fresh.ema_decay_at(50) == pytest.approx(51 / 60)


def test_a_resumed_warm_run_equals_the_uninterrupted_one_bit_for_bit(tmp_path, dataset, first):
    config = config_of(dataset)
    whole = train(config, tmp_path / "whole", init=first, progress=False)
    train(config.replace(steps=8), tmp_path / "split", init=first, init_step=6, progress=False)
    resumed = train(config, tmp_path / "split", resume=True, progress=False)
    assert (whole.step, resumed.step) == (12, 12)
    assert_same_run(whole.checkpoint, resumed.checkpoint)
    assert [r["loss"] for r in log(tmp_path / "whole")] == [r["loss"] for r in log(tmp_path / "split")]


def test_a_warm_run_resumed_before_its_first_checkpoint_starts_again_from_the_init(tmp_path, dataset, first):
    """No checkpoint yet: resume loads the init model the config records (checked by its
    fingerprint) and starts at its step again; a saved config run anew does the same."""
    config = config_of(dataset, checkpoint_every=100)
    init = tmp_path / "init.safetensors"
    init.write_bytes(first.read_bytes())
    whole = train(config, tmp_path / "whole", init=init, progress=False)
    train(config.replace(steps=8), tmp_path / "cut", init=init, init_step=6, progress=False)
    for p in (tmp_path / "cut" / "checkpoints").iterdir():
        p.unlink()
    again = train(config, tmp_path / "cut", resume=True, progress=False)
    assert [r["step"] for r in log(tmp_path / "cut")] == list(range(7, 13))
    saved = TrainConfig.from_dict(load_toml(tmp_path / "whole" / "config.toml"))
    replayed = train(saved, tmp_path / "replayed", progress=False)  # no init=: the config's record
    a = load_file(whole.checkpoint)
    for other in (again, replayed):
        b = load_file(other.checkpoint)
        assert all(torch.equal(a[k], b[k]) for k in a)
    ddim.save(ddim.load(tmp_path / "whole" / "model.safetensors"), init)  # another model there now
    with pytest.raises(ValueError, match="is not the model this run started from"):
        train(saved, tmp_path / "other", progress=False)


def test_cli_warm_start_and_its_refusals_in_one_line(tmp_path, dataset, first, capsys):
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(to_toml(config_of(dataset).to_dict()))
    base = ["train", "--config", config_file, "--quiet"]
    ok = ["--out", tmp_path / "ok", "--init", first, "--init-step", 0, "--steps", 2]
    code, _, err = run_cli(capsys, *base, *ok)
    assert code == 0, err
    assert [r["step"] for r in log(tmp_path / "ok")] == [1, 2]
    assert TrainConfig.from_dict(load_toml(tmp_path / "ok" / "config.toml")).init_step == 0
    schedule = ddim.NoiseSchedule.linear(50)
    v_model = Model(ddim.load(first).net, schedule, (1, 8, 8), "v")
    ddim.save(v_model, tmp_path / "v.safetensors")
    cases = [
        (["--init", first, "--set", "net.ch=16"], f"--init {first} has net.ch = 8, the config has 16"),
        (["--init", first, "--set", "net.dropout=0.0"], "has net.dropout = 0.1, the config has 0.0"),
        (["--init", first, "--set", "num_timesteps=60"], "has a different noise schedule (T = 50"),
        (["--init", tmp_path / "v.safetensors"], "predicts v, training trains eps"),
        (["--init", first, "--steps", 20], "with steps = 12, this run has 20: give --init-step 6 to go on"),
        (["--init", first, "--init-step", 12], "starts at step 12, and steps=12: nothing to train"),
        (["--init", "toy"], "--init toy is a MixtureDenoiser, training builds a ddim UNet"),
        (["--init", first, "--resume"], "--init MODEL starts a new run and --resume continues one"),
        (["--init-step", 3], "--init-step N applies to a warm start: give --init MODEL too"),
        (["--set", "init=x"], "record a warm start, set by training from --init MODEL, not by hand"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(capsys, *base, "--out", tmp_path / "bad", *extra)
        assert code == 2, err
        assert message in err
        assert err.count("\n") == 1
    assert not (tmp_path / "bad").exists()
