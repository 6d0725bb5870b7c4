"""The shipped MNIST models are what their cards (docs/models/mnist.md, mnist-cond.md) say they are."""

from pathlib import Path

import pytest
import torch

import ddim
from ddim.train_config import TrainConfig, load_toml
from helpers import MNIST, needs_builtin, needs_mnist

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def shipped(name: str, *values, marks=()):
    """A parameter set for the built-in model `name`, skipped if its weights are not in the package."""
    return pytest.param(name, *values, marks=(needs_builtin(name), *marks))


@pytest.mark.parametrize(
    ("name", "parameters", "classes"),
    [shipped("mnist", 2_734_945, ()), shipped("mnist-cond", 2_736_353, tuple("0123456789"))],
)
def test_a_shipped_model_matches_its_recipe(name, parameters, classes):
    model = ddim.load(name)
    assert model.image_shape == (1, 28, 28)
    assert model.prediction == "eps"
    assert model.num_parameters == parameters
    assert model.class_names == classes
    recipe = TrainConfig.from_dict(model.info["training"])
    assert recipe.replace(data="") == TrainConfig.from_dict(load_toml(CONFIGS / f"{name}.toml"))
    assert model.info["step"] == recipe.steps
    torch.testing.assert_close(model.schedule.betas, recipe.schedule().betas, rtol=0, atol=0)
    x = ddim.sample(model, 2, steps=5, seed=0)
    assert x.shape == (2, 1, 28, 28)
    assert x.isfinite().all()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        shipped("mnist"),  # 90.9 % (docs/models/mnist.md)
        shipped("mnist-cond", marks=[pytest.mark.xfail(
            strict=True, reason="its null class: 84.2 % confident samples (docs/models/mnist-cond.md)")]),
    ],
)  # fmt: skip
def test_its_digits_are_recognisable(name):
    """Issue 3's criteria: of 1,000 samples (S = 50, η = 0; unconditional, as a bare `ddim sample`
    draws them) ≥ 90 % are classified with confidence ≥ 0.9 by the project's MNIST classifier,
    and each digit gets 5-15 % of them."""
    from benchmarks.recognisable import measure

    r = measure(ddim.load(name), n=1000, steps=50, eta=0.0, seed=0)
    assert r.confident >= 0.9
    assert all(0.05 <= share <= 0.15 for share in r.class_shares), r.class_shares


@pytest.mark.slow
@needs_builtin("mnist-cond")
def test_guided_samples_are_their_class():
    """Issue 11's criterion on mnist-cond: at w = 2, S = 50, the classifier labels ≥ 95 % of each
    class's 100 samples as that class."""
    from benchmarks.guidance import class_accuracy

    from ddim.metrics import load_extractor

    shares = class_accuracy(ddim.load("mnist-cond"), load_extractor("mnist").net.eval(), 100, 50, 2.0)
    assert min(shares) >= 0.95, shares


@pytest.mark.slow
@needs_builtin("mnist-cond")
@needs_mnist
def test_sdedit_edits_test_digits_to_their_target():
    """Issue 11's editing criterion on mnist-cond: of the first 100 test digits, each sent to another
    class by SDEdit (s = 0.6, w = 2, S = 50), ≥ 80 % are labelled as the target while closer to
    their source than an unrelated sample of the target class."""
    from benchmarks.guidance import edit_trials

    from ddim.data import load_images, load_labels, to_model_range
    from ddim.metrics import load_extractor

    x0 = to_model_range(load_images(MNIST, key="x_test", resolution=28, channels=1, limit=100))
    y = load_labels(MNIST, key="y_test", limit=100)[0]
    classifier = load_extractor("mnist").net.eval()
    r = edit_trials(ddim.load("mnist-cond"), classifier, x0, y, steps=50, guidance=2.0, strength=0.6)
    assert r.both >= 0.8, r


@needs_builtin("mnist-4step")
def test_the_4_step_student_matches_its_card():
    model = ddim.load("mnist-4step")
    assert (model.prediction, model.num_parameters, model.image_shape) == ("v", 2_734_945, (1, 28, 28))
    assert model.default_timesteps == (999, 749, 499, 249)
    assert model.info["distilled"]["teacher_timesteps"] == [999, 874, 749, 624, 499, 374, 249, 124]
    assert model.info["distillation"]["steps_per_stage"] == [1500, 1200, 1200]


@pytest.mark.slow
@needs_builtin("mnist-4step")
def test_the_4_step_students_digits_are_recognisable():
    """The issue's bar for a student: ≥ 85 % named with confidence ≥ 0.9, every digit 5-15 %."""
    from benchmarks.recognisable import classify

    confident, shares = classify(ddim.sample(ddim.load("mnist-4step"), 1000, seed=0, batch_size=250))
    assert confident >= 0.85
    assert min(shares) >= 0.05
    assert max(shares) <= 0.15
