"""Classifier-free guidance: exact identities, the analytic class-conditional mixture, errors."""

import json
import math

import numpy as np
import pytest
import torch

import ddim
from ddim.guidance import MAX_GUIDANCE, dynamic_thresholding, guided
from ddim.inversion import upward_sequence
from ddim.models import Model
from ddim.models.parameterization import to_x0_eps
from ddim.samplers import names
from ddim.schedule import NoiseSchedule, timesteps
from ddim.toy import GLYPH_NAMES, MixtureDenoiser, gaussian_gain, glyphs, toy_model
from helpers import run_cli

SCHEDULE = NoiseSchedule.linear()
# three overlapping classes in 2-D (means on a unit circle, std 0.5), as (1, 1, 2) "images"
ANGLES = torch.arange(3, dtype=torch.float64) * 2 * math.pi / 3
MEANS = torch.stack([ANGLES.cos(), ANGLES.sin()], 1)  # (3, 2)
STD = 0.5


def _triangle(std: float = STD) -> Model:
    net = MixtureDenoiser(SCHEDULE, MEANS.reshape(3, 1, 1, 2), std, conditional=True)
    return Model(net, SCHEDULE, (1, 1, 2), "eps", {}, ("a", "b", "c"))


@pytest.fixture
def glyph_model() -> Model:
    return toy_model(size=8, conditional=True)


@pytest.fixture
def conditional_unet(make_tiny_model) -> Model:
    model = make_tiny_model(num_classes=3)
    with torch.no_grad():  # the null row and the classes must differ for the tests to mean anything
        model.net.class_embedding.weight.normal_(generator=torch.Generator().manual_seed(1))
    return Model(model.net, model.schedule, model.image_shape, "eps", {}, ("zero", "one", "two"))


def test_guidance_zero_is_unconditional_sampling_exactly(glyph_model, conditional_unet):
    for model in (glyph_model, conditional_unet):
        plain = ddim.sample(model, 6, steps=8, seed=3, eta=0.5)
        assert torch.equal(
            ddim.sample(model, 6, steps=8, seed=3, eta=0.5, classes=[0, 1, 2] * 2, guidance=0), plain
        )


def test_guidance_one_is_the_plain_conditional_model(conditional_unet):
    net, y = conditional_unet.net, torch.tensor([2, 0, 1, 1])
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([5, 50, 99, 0])
    with torch.no_grad():
        assert torch.equal(guided(net, y, 1.0)(x, t), net(x, t, y))
        assert torch.equal(guided(net, y, 0.0)(x, t), net(x, t))  # y = None: the null class


def test_one_batched_forward_equals_two_separate_calls(conditional_unet):
    net, y, w = conditional_unet.net, torch.tensor([2, 0, 1, 1]), 3.5
    calls = []
    hook = net.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([5, 50, 99, 0])
    with torch.no_grad():
        eps = guided(net, y, w)(x, t)
        assert calls == [8]  # one forward on the doubled batch
        cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, 3))
    hook.remove()
    torch.testing.assert_close(eps, uncond + w * (cond - uncond), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(cond, uncond, atol=1e-3)  # the classes do change the output


@pytest.mark.parametrize("sampler", names())
def test_every_sampler_samples_the_guided_eps_function(conditional_unet, sampler):
    """sample(model, classes, guidance) == the same sampler run on the explicit ε̃ callable."""
    model, labels = conditional_unet, torch.tensor([0, 1, 2, 1])
    x_T = ddim.seeded_latents(model.image_shape, 0, range(4))
    eps = guided(model.net, labels, 2.5)
    expected = ddim.sample(eps, noise=x_T, schedule=model.schedule, steps=5, sampler=sampler, seed=7)
    got = ddim.sample(model, 4, steps=5, sampler=sampler, seed=0, classes=[0, 1, 2, 1], guidance=2.5)
    assert torch.equal(ddim.sample(model, noise=x_T, steps=5, sampler=sampler, seed=7, classes=labels,
                                   guidance=2.5), expected)  # fmt: skip
    if sampler == "ddim":
        assert torch.equal(got, expected)  # η = 0: the seed only draws x_T


def test_per_sample_seeds_and_classes_do_not_depend_on_batching(conditional_unet):
    """Equal up to float32 rounding, as without classes (tests/test_sampling.py), which ε̃ scales
    by up to w + |w − 1|; the x_T are the seeds' own."""
    w, classes = 3.0, ["two", "zero", "one", "one", "zero"]
    kwargs = {"steps": 4, "seed": 5, "eta": 1.0, "classes": classes, "guidance": w}
    whole = ddim.sample(conditional_unet, 5, **kwargs)
    same = {"rtol": 0, "atol": 1e-5 * (w + abs(w - 1)) * whole.abs().max().item()}
    torch.testing.assert_close(ddim.sample(conditional_unet, 5, batch_size=2, **kwargs), whole, **same)
    _, trajectory = ddim.sample(conditional_unet, 5, return_trajectory=True, **kwargs)
    assert torch.equal(trajectory.xt[0], ddim.seeded_latents((1, 8, 8), 5, range(5)))


def test_conditional_toy_is_the_exact_gaussian_of_its_class():
    """w = 1 on the mixture with one class per mode: every sample is the exact η = 0 DDIM map of
    N(μ_k, s² I), μ_k + c (x_T − √ᾱ_τS μ_k) with the gain c of `gaussian_gain`."""
    model, S = _triangle(), 20
    ts = timesteps(1000, S).tolist()
    x_T = ddim.seeded_latents((1, 1, 2), 0, range(30)).double()
    gain = gaussian_gain(SCHEDULE, STD, [*ts, -1])
    for k in range(3):
        x = ddim.sample(model, noise=x_T.float(), steps=S, classes=k, guidance=1)
        mu = MEANS[k].reshape(1, 1, 2)
        expected = mu + gain * (x_T - SCHEDULE.alpha_bar[ts[0]].sqrt() * mu)
        torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-5)
        up = gaussian_gain(
            SCHEDULE, STD, upward_sequence(ts)
        )  # inversion with the class: the same map upward
        x_up = ddim.invert(model, expected.float().clamp(-1, 1), steps=S, classes=k)
        x0 = expected.clamp(-1, 1)
        a0, a_top = SCHEDULE.alpha_bar[0].sqrt(), SCHEDULE.alpha_bar[ts[0]].sqrt()
        torch.testing.assert_close(x_up.double(), a_top * mu + up * (x0 - a0 * mu), rtol=0, atol=1e-5)


def _posterior(x: torch.Tensor) -> torch.Tensor:
    """log p(k | x_0) under the true mixture (equal weights), (n, 3)."""
    return (-((x.reshape(-1, 1, 2).double() - MEANS[None]) ** 2).sum(-1) / (2 * STD**2)).log_softmax(1)


def test_guidance_concentrates_samples_in_their_class():
    """Overlapping classes: at w = 0 the class is ignored (p(k | x_0) ≈ 1/3 on average), and each
    larger w raises the mean log-odds log p(k | x_0) / p(not k | x_0) under the true mixture
    (measured 4.6, 7.1, 9.8 nats at w = 1, 2, 4; 600 samples per class)."""
    model = _triangle()
    for k in range(3):
        log_p = [_posterior(ddim.sample(model, 600, steps=20, seed=0, classes=k, guidance=w))
                 for w in (0, 1, 2, 4)]  # fmt: skip
        assert log_p[0][:, k].exp().mean().item() == pytest.approx(1 / 3, abs=0.05)  # ~4 standard errors
        others = [torch.cat([lp[:, :k], lp[:, k + 1 :]], 1).logsumexp(1) for lp in log_p]
        odds = [(lp[:, k] - o).mean().item() for lp, o in zip(log_p, others, strict=True)]
        assert odds[1] > 3
        assert odds[2] > odds[1] + 1
        assert odds[3] > odds[2] + 1


def test_class_k_samples_land_in_mode_k(glyph_model):
    shapes = glyphs(8).flatten(1)
    for w in (1, 2, 4):
        x = ddim.sample(glyph_model, 16, steps=20, seed=0, classes=[k % 8 for k in range(16)], guidance=w)
        nearest = torch.cdist(x.flatten(1), shapes).argmin(1)
        assert nearest.tolist() == [k % 8 for k in range(16)]
    x = ddim.sample(glyph_model, 16, steps=20, seed=0, classes=[k % 8 for k in range(16)], guidance=0)
    assert (
        torch.cdist(x.flatten(1), shapes).argmin(1) != torch.arange(16) % 8
    ).sum() >= 8  # w = 0 ignores it


def test_dynamic_thresholding_rescales_x0_per_sample():
    a = SCHEDULE.alpha_bar[400].item()
    x0 = torch.stack([torch.linspace(-0.9, 0.9, 16), torch.linspace(-3, 2, 16)]).reshape(2, 1, 4, 4)
    x_t = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    eps = (x_t - a**0.5 * x0) / (1 - a) ** 0.5  # the ε whose x̂_0 is x0

    net = dynamic_thresholding(lambda x, t: eps, SCHEDULE, "eps", 0.9)
    got, _ = to_x0_eps(net(x_t, torch.full((2,), 400)), x_t, a, "eps")
    s = max(1.0, float(np.quantile(np.abs(x0[1].numpy()), 0.9)))  # numpy's linear quantile, s ≈ 2.6
    torch.testing.assert_close(got[0], x0[0], rtol=0, atol=1e-5)  # |x̂_0| ≤ 1: unchanged
    torch.testing.assert_close(got[1], x0[1].clamp(-s, s) / s, rtol=0, atol=1e-5)
    assert s > 2
    with pytest.raises(ValueError, match=r"percentile must be in \(0, 1\]"):
        dynamic_thresholding(lambda x, t: eps, SCHEDULE, "eps", 1.5)


def test_dynamic_thresholding_keeps_samples_in_range_at_high_guidance():
    kwargs = {"steps": 10, "seed": 0, "classes": 1, "guidance": 8}  # pushed beyond μ_1, away from the others
    assert ddim.sample(_triangle(), 64, **kwargs).abs().max() > 1.5
    assert ddim.sample(_triangle(), 64, dynamic_threshold=0.99, **kwargs).abs().max() <= 1 + 1e-5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": 8}, r"unknown class 8: the model's classes are 0 to 7 \(ring, disc,"),
        ({"classes": -1}, "unknown class -1"),
        ({"classes": "hexagon"}, "unknown class 'hexagon'"),
        ({"classes": 1.5}, "unknown class 1.5"),
        ({"classes": [1, 2, 3]}, "one class for all 2 samples or one per sample, got 3"),
        ({"classes": 1, "guidance": -0.5}, r"guidance must be a number in \[0, 20\], got -0.5"),
        ({"classes": 1, "guidance": MAX_GUIDANCE + 1}, "guidance must be a number in"),
        ({"classes": 1, "guidance": float("nan")}, "guidance must be a number in"),
        ({"guidance": 2.0}, "guidance needs classes"),
    ],
)
def test_bad_classes_and_guidance_are_refused(glyph_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ddim.sample(glyph_model, 2, steps=2, **kwargs)


def test_classes_on_an_unconditional_model_are_refused(tiny_model):
    for call in (lambda: ddim.sample(tiny_model, 2, steps=2, classes=1),
                 lambda: ddim.invert(tiny_model, torch.zeros(1, 1, 8, 8), steps=2, classes=1)):  # fmt: skip
        with pytest.raises(ValueError, match="the model is unconditional"):
            call()
    with pytest.raises(ValueError, match="unconditional"):
        tiny_model.net(torch.zeros(1, 1, 8, 8), torch.tensor([1]), torch.tensor([0]))


def test_class_names_are_checked(glyph_model):
    net = glyph_model.net
    assert glyph_model.class_names == GLYPH_NAMES
    with pytest.raises(ValueError, match="8 distinct names"):
        Model(net, SCHEDULE, (1, 8, 8), "eps", {}, ("a", "b"))
    with pytest.raises(ValueError, match="0 distinct names"):
        Model(toy_model(size=8).net, SCHEDULE, (1, 8, 8), "eps", {}, GLYPH_NAMES)


# -- the command line -------------------------------------------------------------------------


@pytest.fixture
def glyph_checkpoint(tmp_path, glyph_model):
    return ddim.save(glyph_model, tmp_path / "glyphs.safetensors")


def test_cli_class_and_guidance_sample_what_the_api_does(tmp_path, capsys, glyph_checkpoint, glyph_model):
    code, out, err = run_cli(capsys, "sample", "--model", glyph_checkpoint, "--class", "ring,3,stripes",
                             "--guidance", 2, "--steps", 5, "--npz", tmp_path / "s.npz")  # fmt: skip
    assert code == 0, err
    assert "3 samples" in out  # one per class given
    expected = ddim.sample(glyph_model, 3, steps=5, seed=0, classes=[0, 3, 7], guidance=2)
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "s.npz")["x"]), expected)
    code, out, err = run_cli(capsys, "sample", "--model", glyph_checkpoint, "--class", "disc", "-n", 4,
                             "--steps", 5, "--dry-run")  # fmt: skip
    assert code == 0, err
    settings = json.loads(out)
    assert (settings["classes"], settings["guidance"], settings["n"]) == ([1, 1, 1, 1], 1.0, 4)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--class", "9"], "unknown class 9: the model's classes are 0 to 7"),
        (["--class", "hexagon"], "unknown class 'hexagon'"),
        (["--class", "1,2", "-n", "3"], "one class for all 3 samples or one per sample, got 2"),
        (["--class", "1", "--guidance", "-1"], "argument --guidance: must be in [0, 20], got -1"),
        (["--class", "1", "--guidance", "1e6"], "must be in [0, 20], got 1e6"),
        (["--guidance", "2"], "guidance needs classes"),
        (["--class", "1,,2"], "expected a class or comma-separated classes"),
    ],
)
def test_cli_refuses_bad_classes_in_one_line(capsys, glyph_checkpoint, argv, message):
    code, _, err = run_cli(capsys, "sample", "--model", glyph_checkpoint, "--steps", 2, "--dry-run", *argv)
    assert code == 2
    assert err.count("\n") == 1
    assert message in err, err


def test_cli_class_on_an_unconditional_model(capsys, tiny_checkpoint):
    code, _, err = run_cli(capsys, "sample", "--model", tiny_checkpoint, "--class", "1", "--dry-run")
    assert code == 2
    assert "classes were given but the model is unconditional" in err
    assert err.count("\n") == 1


def test_cli_info_names_the_classes(capsys, glyph_checkpoint, tiny_checkpoint):
    code, out, err = run_cli(capsys, "info", glyph_checkpoint, "--json")
    assert code == 0, err
    assert json.loads(out)["classes"] == list(GLYPH_NAMES)
    code, out, err = run_cli(capsys, "info", tiny_checkpoint)
    assert code == 0, err
    assert "classes" not in out
