"""Progressive distillation: the target against the sampler's own loop, the grids, tiny end-to-end
runs through the command, exact resume, one-line errors, and the distilled timesteps as default."""

import json
import signal
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ddim
import ddim.distillation as distillation
from ddim.checkpoint import read_metadata
from ddim.denoising import denoise
from ddim.distill_config import DistillConfig
from ddim.distillation import (
    distill,
    distillation_loss,
    distillation_target,
    stage_grid,
    teacher_two_steps,
    truncated_snr_weight,
)
from ddim.models import Model
from ddim.models.parameterization import eps_from_x0, from_x0_eps
from ddim.plan import DistilledWarning, resolve
from ddim.toy import MixtureDenoiser
from ddim.training import TrainingError
from helpers import MNIST, needs_mnist, random_images, run_cli

PREDICTIONS = ("eps", "x0", "v")


@pytest.fixture
def teacher_file(tmp_path, make_tiny_model):
    """A tiny random U-Net (T = 100) as the teacher, with dropout so the student's steps draw it."""
    return ddim.save(make_tiny_model(dropout=0.1), tmp_path / "teacher.safetensors")


@pytest.fixture
def dataset(tmp_path):
    return random_images(tmp_path / "data.npz")


def tiny_config(teacher_file, dataset, **overrides) -> DistillConfig:
    settings = {"teacher": str(teacher_file), "data": str(dataset), "teacher_steps": 4, "final_steps": 1,
                "steps_per_stage": 3, "batch_size": 8, "log_every": 1, "checkpoint_every": 2, "sample_n": 4,
                **overrides}  # fmt: skip
    return DistillConfig.from_dict(settings)


def mixture(prediction: str) -> Model:
    """The exact denoiser of a 3-component Gaussian mixture in 2 × 3 × 3, float64 throughout."""
    schedule = ddim.NoiseSchedule.linear(1000)
    means = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    net = MixtureDenoiser(schedule, means, torch.tensor([0.3, 0.5, 0.2]), prediction=prediction)
    return Model(net, schedule, (2, 3, 3), prediction)


# -- the maths ---------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1000, 50])
def test_trailing_grids_halve_exactly_and_start_at_the_last_timestep(T):
    for S in [2**k for k in range(10) if 2 ** (k + 1) <= T]:
        grid = stage_grid(T, S)
        teacher = ddim.timesteps(T, 2 * S, "trailing").tolist()
        assert grid.student == ddim.timesteps(T, S, "trailing").tolist() == teacher[::2]
        assert grid.teacher == teacher
        assert grid.student[0] == T - 1
        assert grid.t_mid.tolist() == teacher[1::2]
        assert grid.t_next.tolist() == [*grid.student[1:], -1]
        assert (grid.t > grid.t_mid).all()
        assert (grid.t_mid > grid.t_next).all()
    with pytest.raises(ValueError, match="power of two"):
        stage_grid(T, 3)
    too_many = {1000: 512, 50: 32}[T]  # the first power of two whose teacher takes more than T steps
    with pytest.raises(
        ValueError, match=f"teacher_steps={2 * too_many} is more than the teacher's {T} timesteps"
    ):
        stage_grid(T, too_many)


@pytest.mark.parametrize("teacher_prediction", PREDICTIONS)
@pytest.mark.parametrize("student_prediction", PREDICTIONS)
def test_one_student_step_on_the_target_is_the_teachers_two_steps(teacher_prediction, student_prediction):
    """Per-sample t: the teacher's two steps equal the sampling loop's own (`denoise`, one t at a
    time), and a student whose output is the target x̃ (as eps, x0 or v) lands on the same x_t''
    in ONE step of that loop, the last step to clean data (t'' = −1) included."""
    teacher = mixture(teacher_prediction)
    schedule, S = teacher.schedule, 4
    grid = stage_grid(1000, S)
    g = torch.Generator().manual_seed(0)
    x0 = teacher.net.sample_data(S, g)[0]  # (S, 2, 3, 3) float64, one sample per grid step
    z = schedule.q_sample(x0, grid.t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    z_next = teacher_two_steps(teacher.net, z, grid.t, grid.t_mid, grid.t_next, schedule, teacher_prediction)
    a = schedule.alpha_bar_at(grid.t).view(-1, 1, 1, 1)
    a_next = schedule.alpha_bar_at(grid.t_next).view(-1, 1, 1, 1)
    target = distillation_target(z, z_next, a, a_next)
    for i, (t, t_mid, t_next) in enumerate(
        zip(grid.t.tolist(), grid.t_mid.tolist(), grid.t_next.tolist(), strict=True)
    ):
        two = denoise(teacher.net, z[i : i + 1], schedule, [t, t_mid, t_next], prediction=teacher_prediction)
        torch.testing.assert_close(z_next[i : i + 1], two, rtol=0, atol=1e-12)
        x_tilde, a_t = target[i : i + 1], a[i].item()
        out = from_x0_eps(x_tilde, eps_from_x0(z[i : i + 1], x_tilde, a_t), a_t, student_prediction)
        one = denoise(
            lambda x, t, out=out: out, z[i : i + 1], schedule, [t, t_next], prediction=student_prediction
        )
        torch.testing.assert_close(one, two, rtol=0, atol=1e-10)
    assert grid.t_next[-1] == -1
    torch.testing.assert_close(target[-1], z_next[-1], rtol=0, atol=0)  # ᾱ = 1: x̃ is the teacher's x_0


@pytest.mark.parametrize("student_prediction", PREDICTIONS)
def test_the_loss_is_the_truncated_snr_weighted_x_error(student_prediction):
    """A student whose x̂_0 is x̃ + δ has loss mean(max(SNR_t, 1)) · δ²; δ = 0 gives 0."""
    teacher = mixture("eps")
    schedule, grid = teacher.schedule, stage_grid(1000, 8)
    g = torch.Generator().manual_seed(2)
    x0 = teacher.net.sample_data(8, g)[0].float()
    eps, idx = torch.randn(x0.shape, generator=g), torch.arange(8)
    a = schedule.alpha_bar_at(grid.t).float().view(-1, 1, 1, 1)
    z = schedule.q_sample(x0, grid.t, eps)
    z_next = teacher_two_steps(teacher.net, z, grid.t, grid.t_mid, grid.t_next, schedule, "eps")
    target = distillation_target(z, z_next, a, schedule.alpha_bar_at(grid.t_next).float().view(-1, 1, 1, 1))
    weights = torch.maximum(a.flatten() / (1 - a.flatten()), torch.ones(8))
    torch.testing.assert_close(truncated_snr_weight(a.flatten()), weights)
    for delta in (0.0, 0.25):
        x_hat = target + delta

        def student(x, t, x_hat=x_hat):
            return from_x0_eps(x_hat, eps_from_x0(x, x_hat, a), a, student_prediction)

        loss = distillation_loss(student, student_prediction, teacher, x0, idx, eps, grid)
        assert loss.item() == pytest.approx(weights.mean().item() * delta**2, rel=1e-4, abs=1e-9)


# -- configuration -----------------------------------------------------------------------------


def test_config_stages_learning_rate_and_toml_round_trip(tmp_path):
    from ddim.train_config import load_toml, to_toml

    c = DistillConfig(teacher_steps=16, final_steps=2, steps_per_stage=(10, 20, 30), lr=1e-4, warmup_steps=2)
    assert (c.num_stages, c.steps, [c.student_steps(i) for i in range(3)]) == (3, 60, [8, 4, 2])
    assert [c.stage_of(s) for s in (0, 9, 10, 29, 30, 59)] == [
        (0, 0),
        (0, 9),
        (1, 0),
        (1, 19),
        (2, 0),
        (2, 29),
    ]
    assert c.lr_at(0, 10) == pytest.approx(5e-5)
    assert c.lr_at(2, 10) == pytest.approx(1e-4)
    assert c.lr_at(6, 10) == pytest.approx(5e-5)  # half-way down the linear decay to 0 at the end
    (tmp_path / "c.toml").write_text(to_toml(c.to_dict()))
    assert DistillConfig.from_dict(load_toml(tmp_path / "c.toml")) == c
    assert DistillConfig(steps_per_stage=7).steps == 7 * 6  # 64 → 1: six stages


# -- runs ----------------------------------------------------------------------------------------


def test_a_tiny_run_writes_students_that_sample_on_their_own_timesteps(
    tmp_path, teacher_file, dataset, capsys
):
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys, "distill", "--model", teacher_file, "--data", dataset, "--out", out, "--teacher-steps", 4,
        "--steps-per-stage", 2, "--batch-size", 8, "--set", "sample_n=4", "--set", "log_every=1", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "student: " + str(out / "students" / "2-step.safetensors") in stdout
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "1-step.png",
        "2-step.png",
        "teacher-4-step.png",
    ]
    assert (out / "model.safetensors").read_bytes() == (out / "students" / "1-step.safetensors").read_bytes()
    meta = read_metadata(out / "students" / "2-step.safetensors")
    assert meta["prediction"] == "v"
    assert meta["info"]["distilled"]["timesteps"] == [99, 49]  # trailing: round(100 − i·50) − 1
    assert meta["info"]["distilled"]["teacher_timesteps"] == [99, 74, 49, 24]
    assert meta["info"]["distillation"] == DistillConfig.from_dict(meta["info"]["distillation"]).to_dict()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["stage"], r["student_steps"]) for r in records] == [
        (1, 1, 2),
        (2, 1, 2),
        (3, 2, 1),
        (4, 2, 1),
    ]
    student = ddim.load(out / "model.safetensors")
    assert student.default_timesteps == (99,)
    plan = resolve(student, 2)
    assert plan.timesteps == [99]
    code, stdout, err = run_cli(capsys, "info", out / "students" / "2-step.safetensors", "--json")
    assert (code, json.loads(stdout)["distilled_timesteps"]) == (0, [99, 49])
    code, stdout, err = run_cli(capsys, "sample", "--model", out / "model.safetensors", "--dry-run")
    assert (code, err) == (0, "")
    assert json.loads(stdout)["timesteps"] == [99]
    code, stdout, err = run_cli(capsys, "sample", "--model", out / "model.safetensors", "-n", 2,
                                "--out", tmp_path / "s.png", "--quiet")  # fmt: skip
    assert (code, err) == (0, "")
    assert "2 samples, 1 steps" in stdout


def _interrupt_after(monkeypatch, calls: list[int]):
    """Ctrl-C (a real SIGINT) during the given steps' EMA update: the run stops after them."""
    real, count = distillation.ema_update, [0]

    def ema_update(*args, **kwargs):
        count[0] += 1
        if count[0] in calls:
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(distillation, "ema_update", ema_update)


def test_resume_gives_the_same_students_bit_for_bit(tmp_path, teacher_file, dataset, monkeypatch):
    """4 steps in one go == stopped inside stage 1, resumed, stopped at its end (and the student
    file lost, as if killed before the copy), resumed to the end: the same students, optimizer
    state and losses."""
    config = tiny_config(teacher_file, dataset, steps_per_stage=2)
    whole = distill(config, tmp_path / "whole", progress=False)
    split = tmp_path / "split"
    with monkeypatch.context() as m:
        _interrupt_after(m, [1])
        first = distill(config, split, progress=False)
    assert (first.step, first.interrupted, first.students) == (1, True, ())
    with monkeypatch.context() as m:
        _interrupt_after(m, [1])
        second = distill(config, split, resume=True, progress=False)
    assert (second.step, second.interrupted, [p.name for p in second.students]) == (
        2,
        True,
        ["2-step.safetensors"],
    )
    (split / "students" / "2-step.safetensors").unlink()
    last = distill(config, split, resume=True, progress=False)
    assert (last.step, last.interrupted) == (4, False)
    assert [p.name for p in last.students] == ["2-step.safetensors", "1-step.safetensors"]
    for name in ("students/2-step.safetensors", "students/1-step.safetensors", "model.safetensors"):
        a, b = load_file(tmp_path / "whole" / name), load_file(split / name)
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
    sa, sb = (torch.load(r.checkpoint.with_suffix(".state.pt"), weights_only=True) for r in (whole, last))
    assert all(torch.equal(sa["net"][k], sb["net"][k]) for k in sa["net"])
    assert sa["optimizer"]["state"][0]["exp_avg_sq"].equal(sb["optimizer"]["state"][0]["exp_avg_sq"])
    logs = [[json.loads(line)["loss"] for line in (r / "metrics.jsonl").read_text().splitlines()]
            for r in (tmp_path / "whole", split)]  # fmt: skip
    assert logs[0] == logs[1]
    assert len(logs[0]) == 4


def test_the_command_stops_on_ctrl_c_and_says_how_to_go_on(
    tmp_path, teacher_file, dataset, monkeypatch, capsys
):
    out = tmp_path / "run"
    args = ["--model", teacher_file, "--data", dataset, "--out", out, "--teacher-steps", 4,
            "--steps-per-stage", 2, "--batch-size", 8, "--set", "sample_n=4", "--quiet"]  # fmt: skip
    with monkeypatch.context() as m:
        _interrupt_after(m, [1])
        code, stdout, err = run_cli(capsys, "distill", *args)
    assert (code, err) == (130, "")
    assert stdout == (
        f"interrupted at step 1; saved {out / 'checkpoints' / 'step-00000001.safetensors'}\n"
        f"continue with: ddim distill --out {out} --resume\n"
    )
    code, stdout, err = run_cli(capsys, "distill", "--out", out, "--resume", "--quiet")
    assert (code, err) == (0, "")
    assert stdout.startswith(f"student: {out / 'students' / '2-step.safetensors'}\n")


@needs_mnist
@pytest.mark.slow
def test_the_shipped_mnist_model_distils_on_real_digits(tmp_path, capsys):
    """The ε-prediction `mnist` as teacher on MNIST: an 8-step teacher, a v-prediction 4-step student."""
    out = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "distill", "--model", "mnist", "--data", MNIST, "--out", out, "--teacher-steps", 8,
        "--final-steps", 4, "--steps-per-stage", 2, "--batch-size", 8, "--set", "sample_n=4", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    student = ddim.load(out / "model.safetensors")
    assert (student.prediction, student.default_timesteps) == ("v", (999, 749, 499, 249))
    assert all(
        np.isfinite(r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    )
    assert ddim.sample(student, 2, seed=0).isfinite().all()


def test_a_run_killed_before_its_first_checkpoint_starts_again_cleanly(
    tmp_path, teacher_file, dataset, monkeypatch
):
    """Killed (no Ctrl-C: nothing saved) after logging steps 1 and 2: --resume starts from step 0,
    and the log holds each step once, as an uninterrupted run's."""
    from ddim.runs import RunFolder

    config = tiny_config(teacher_file, dataset, steps_per_stage=2)
    with monkeypatch.context() as m:
        m.setattr(RunFolder, "save_checkpoint", lambda *a, **k: (_ for _ in ()).throw(SystemExit("killed")))
        with pytest.raises(SystemExit):
            distill(config, tmp_path / "run", progress=False)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert distill(config, tmp_path / "run", resume=True, progress=False).step == 4
    distill(config, tmp_path / "whole", progress=False)
    logs = [[json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
            for r in ("run", "whole")]  # fmt: skip
    assert [(r["step"], r["loss"]) for r in logs[0]] == [(r["step"], r["loss"]) for r in logs[1]]


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, teacher_file, dataset, monkeypatch):
    real, calls = distillation.distillation_loss, []

    def failing(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs) * (float("nan") if len(calls) == 3 else 1.0)

    monkeypatch.setattr(distillation, "distillation_loss", failing)
    with pytest.raises(
        TrainingError, match=r"loss became nan .* at step 3; the last good checkpoint is .*step-00000002"
    ):
        distill(tiny_config(teacher_file, dataset), tmp_path / "run", progress=False)
    assert ddim.load(tmp_path / "run" / "checkpoints" / "step-00000002.safetensors").info["step"] == 2


def test_bad_inputs_are_refused_in_one_line(tmp_path, teacher_file, dataset, make_tiny_model, capsys):
    conditional = ddim.save(make_tiny_model(num_classes=2), tmp_path / "cond.safetensors")
    base = ["--model", teacher_file, "--data", dataset, "--teacher-steps", 4, "--batch-size", 8, "--quiet"]
    cases = [
        ([*base, "--teacher-steps", 6], "teacher_steps must be a power of two"),
        ([*base, "--final-steps", 3], "final_steps must be a power of two"),
        ([*base, "--final-steps", 8], "final_steps=8 must be fewer than teacher_steps=4"),
        ([*base, "--teacher-steps", 256], "teacher_steps=256 is more than the teacher's 100 timesteps"),
        ([*base, "--set", "steps_per_stage=[5, 5, 5]"], "steps_per_stage must be one number, or 2"),
        ([*base, "--set", "student_prediction='score'"], "student_prediction must be one of eps, x0, v"),
        ([*base, "--data", tmp_path / "nope.npz"], "no such dataset"),
        (["--model", teacher_file, "--quiet"], "no training data: give --data"),
        ([*base, "--model", tmp_path / "nope.safetensors"], "no such file, and not a built-in model"),
        ([*base, "--model", conditional], "is class-conditional (2 classes)"),
        ([*base, "--model", "toy"], "teacher toy has no trainable network"),
        ([*base, "--batch-size", 64], "the dataset has 40 images, fewer than batch_size=64"),
        (["--resume", "--config", tmp_path / "c.toml"], "--config does not apply to --resume"),
        (["--resume"], "holds no distillation run to resume"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(capsys, "distill", "--out", tmp_path / "r", *extra)
        assert (code, err.count("\n")) == (2, 1), (extra, err)
        assert message in err, (extra, err)
    assert not (tmp_path / "r").exists()
    out = tmp_path / "done"
    assert distill(tiny_config(teacher_file, dataset, steps_per_stage=1), out, progress=False).step == 2
    for extra, message in [
        (
            [*base, "--set", "steps_per_stage=1"],
            "already holds a distillation run; continue it with --resume",
        ),
        (["--resume", "--lr", "0.5"], "cannot resume"),
        (["--resume"], "is at step 2, and steps=2: nothing to train\n"),
    ]:
        code, _, err = run_cli(capsys, "distill", "--out", out, *extra)
        assert (code, err.count("\n")) == (2, 1), (extra, err)
        assert message in err, (extra, err)
    student = out / "students" / "2-step.safetensors"
    code, _, err = run_cli(capsys, "distill", "--out", tmp_path / "r", *base, "--model", student)
    assert (code, err.count("\n")) == (2, 1)
    assert "was distilled for timesteps [99, 49], but teacher_steps=4 samples it on [99, 74, 49, 24]" in err


def test_a_student_used_with_other_timesteps_says_so_once(make_tiny_model, capsys, tmp_path):
    base = make_tiny_model()
    student = Model(base.net, base.schedule, base.image_shape, "v", {"distilled": {"timesteps": [99, 49]}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, trajectory = ddim.sample(student, 2, seed=0, return_trajectory=True)
        assert trajectory.timesteps.tolist() == [99, 49, -1]
        assert caught == []
        ddim.sample(student, 2, steps=3, seed=0)
        ddim.sample(student, 2, timesteps=[99, 49], sampler="dpm-solver++", seed=0)
    assert [w.category for w in caught] == [DistilledWarning, DistilledWarning]
    first, second = (str(w.message) for w in caught)
    assert "\n" not in first
    assert first.startswith(
        "this model was distilled for DDIM (eta=0) on timesteps [99, 49]; sampling it with timesteps ["
    )
    assert "sampler 'dpm-solver++'" in second
    assert "timesteps [" not in second.split(";")[1]
    path = ddim.save(student, tmp_path / "student.safetensors")
    code, _, err = run_cli(capsys, "sample", "--model", path, "--steps", 3, "--dry-run")
    assert code == 0
    assert err.count("\n") == 1
    assert err.startswith(
        "ddim sample: warning: this model was distilled for DDIM (eta=0) on timesteps [99, 49]"
    )
    assert err.rstrip().endswith("(leave out --steps and --timesteps to use its own)")
    forged = Model(base.net, base.schedule, base.image_shape, "v", {"distilled": {"timesteps": "99"}})
    with pytest.raises(ValueError, match="must be a list of integers"):
        resolve(forged, 1)
