"""Editing towards a class: inversion (whole or to a strength) then guided decoding, and SDEdit,
against closed forms."""

import numpy as np
import pytest
import torch
from benchmarks.guidance import class_accuracy, edit_trials, guidance_grid
from PIL import Image

import ddim
from ddim.metrics import load_extractor
from ddim.models import Model
from ddim.schedule import NoiseSchedule, timesteps
from ddim.toy import MixtureDenoiser, gaussian_gain, glyphs, toy_model
from helpers import needs_builtin, run_cli

SCHEDULE = NoiseSchedule.linear()


@pytest.fixture
def glyph_model() -> Model:
    return toy_model(size=8, conditional=True)


def _sources(n: int = 8) -> torch.Tensor:
    """Glyph k with a little pixel noise, in [-1, 1]: (n, 1, 8, 8), image i of glyph i % 8."""
    noise = 0.1 * torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return (glyphs(8)[torch.arange(n) % 8].float() + noise).clamp(-1, 1)


def test_inversion_edit_is_invert_then_guided_decode(glyph_model):
    x0, to = _sources(4), [5, 6, 7, 0]
    x_T = ddim.invert(glyph_model, x0, steps=10, classes=[0, 1, 2, 3])
    expected = ddim.sample(glyph_model, noise=x_T, steps=10, classes=to, guidance=3)
    got = ddim.edit(glyph_model, x0, to, guidance=3, steps=10, from_class=[0, 1, 2, 3])
    assert torch.equal(got, expected)
    unconditional = ddim.invert(glyph_model, x0, steps=10)  # the default: invert without a class
    expected = ddim.sample(glyph_model, noise=unconditional, steps=10, classes=to, guidance=3)
    assert torch.equal(ddim.edit(glyph_model, x0, to, guidance=3, steps=10), expected)


def test_partial_inversion_inverts_to_the_strength_and_decodes_from_there(glyph_model):
    """method="inversion" with strength s: the inversion and the decoding both run over the
    timesteps τ ≤ s·T of the sub-sequence (here 10 steps: 900 … 0 → 500 … 0; trailing: 999 … 99
    → 499 … 99, whose inversion starts with the step 0 → 99); s = 1 is the full inversion."""
    x0, to = _sources(4), [5, 6, 7, 0]
    kept = timesteps(1000, 10)[timesteps(1000, 10) <= 500]
    x_t = ddim.invert(glyph_model, x0, timesteps=kept, classes=[0, 1, 2, 3])
    expected = ddim.sample(glyph_model, noise=x_t, timesteps=kept, classes=to, guidance=3)
    got = ddim.edit(glyph_model, x0, to, guidance=3, steps=10, strength=0.5, method="inversion",
                    from_class=[0, 1, 2, 3])  # fmt: skip
    assert torch.equal(got, expected)
    full = ddim.edit(glyph_model, x0, to, guidance=3, steps=10, from_class=[0, 1, 2, 3])
    whole = ddim.edit(glyph_model, x0, to, guidance=3, steps=10, strength=1, method="inversion",
                      from_class=[0, 1, 2, 3])  # fmt: skip
    assert torch.equal(whole, full)
    assert not torch.allclose(got, full, atol=1e-3)  # the strength matters
    trailing = timesteps(1000, 10, "trailing")
    kept = trailing[trailing <= 500]
    x_t = ddim.invert(glyph_model, x0, timesteps=kept)
    expected = ddim.sample(glyph_model, noise=x_t, timesteps=kept, classes=to, guidance=3)
    got = ddim.edit(glyph_model, x0, to, guidance=3, steps=10, spacing="trailing", strength=0.5,
                    method="inversion")  # fmt: skip
    assert torch.equal(got, expected)


@pytest.mark.parametrize("guidance", [1, 2, 4])
def test_edits_land_on_the_target_glyph(glyph_model, guidance):
    x0 = _sources(8)
    to = [(k + 3) % 8 for k in range(8)]
    shapes = glyphs(8).flatten(1)
    for strength, method in ((None, None), (0.7, "sdedit"), (0.7, "inversion")):
        x = ddim.edit(glyph_model, x0, to, guidance=guidance, steps=20, strength=strength, method=method)
        assert torch.cdist(x.flatten(1), shapes).argmin(1).tolist() == to


@pytest.mark.parametrize(("strength", "start"), [(1.0, 900), (0.5, 500), (0.43, 400), (0.1, 100)])
def test_sdedit_is_the_exact_gaussian_map_from_the_noised_image(strength, start):
    """Data N(μ_k, s²) per class: noising x_0 to τ_start with image i's seeded x_T draw z_i, then
    η = 0 DDIM with class k gives μ_k + c (x_τ − √ᾱ_τ μ_k), c the gain of the remaining path."""
    means = torch.tensor([[[[0.5, -0.5]]], [[[-0.3, 0.2]]]], dtype=torch.float64)  # (2, 1, 1, 2)
    std = 0.3
    model = Model(MixtureDenoiser(SCHEDULE, means, std, conditional=True), SCHEDULE, (1, 1, 2))
    x0 = torch.tensor([[[[0.9, -0.8]]], [[[0.1, 0.3]]], [[[-0.5, 0.5]]]])
    got = ddim.edit(model, x0, 1, guidance=1, strength=strength, steps=10, seed=4)
    path = [t for t in timesteps(1000, 10).tolist() if t <= strength * 1000]
    assert path[0] == start
    z = ddim.seeded_latents((1, 1, 2), 4, range(3)).double()
    a = SCHEDULE.alpha_bar[start]
    x_start = a.sqrt() * x0.double() + (1 - a).sqrt() * z
    expected = means[1] + gaussian_gain(SCHEDULE, std, [*path, -1]) * (x_start - a.sqrt() * means[1])
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"to_class": 8}, "unknown class 8"),
        ({"to_class": "hexagon"}, "unknown class 'hexagon'"),
        ({"to_class": 1, "guidance": -1}, r"guidance must be a number in \[0, 20\]"),
        ({"to_class": 1, "strength": 0.0}, r"strength must be a number in \(0, 1\]"),
        ({"to_class": 1, "strength": 1.5}, r"strength must be a number in \(0, 1\]"),
        ({"to_class": 1, "strength": 0.5, "from_class": 2}, "SDEdit .* does not use it"),
        ({"to_class": 1, "method": "sdedit"}, "SDEdit needs a strength"),
        ({"to_class": 1, "method": "blur"}, "unknown edit method 'blur'"),
        ({"to_class": 1, "strength": 1.5, "method": "inversion"}, r"strength must be a number in \(0, 1\]"),
        (
            {"to_class": 1, "strength": 0.01, "spacing": "trailing", "steps": 10},
            r"below the sub-sequence's lowest timestep above 0, 99 of 1000 \(strength ≥ 0.099\)",
        ),
        ({"to_class": 1, "strength": 0.05, "steps": 10}, "lowest timestep above 0, 100 of 1000"),
        ({"to_class": 1, "strength": 0.05, "steps": 10, "method": "inversion"}, "so nothing would be edited"),
    ],
)
def test_bad_edits_are_refused(glyph_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ddim.edit(glyph_model, _sources(2), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"to_class": [1, 2]}, r"^to_class: give one class for all 3 samples or one per sample, got 2"),
        ({"to_class": 1, "from_class": [1, 2]}, r"^from_class: give one class for all 3 samples"),
        ({"to_class": 1, "from_class": 9}, r"^from_class: unknown class 9"),
    ],
)
def test_classes_are_checked_before_the_inversion_and_named(glyph_model, monkeypatch, kwargs, message):
    def no_network(*args, **kwargs):
        raise AssertionError("the images were inverted before the classes were checked")

    monkeypatch.setattr(ddim.editing, "invert", no_network)
    with pytest.raises(ValueError, match=message):
        ddim.edit(glyph_model, _sources(3), steps=2, **kwargs)


def test_editing_needs_a_conditional_model(tiny_model):
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        ddim.edit(tiny_model, torch.zeros(1, 1, 8, 8), 1)


# -- the command line -------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path, glyph_model):
    checkpoint = ddim.save(glyph_model, tmp_path / "glyphs.safetensors")
    images = ((_sources(3) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()  # (3, 8, 8) uint8
    Image.fromarray(images[0]).save(tmp_path / "ring.png")
    np.savez(tmp_path / "glyphs.npz", x_test=images)
    return checkpoint, tmp_path / "ring.png", tmp_path / "glyphs.npz"


def test_cli_edit_writes_what_the_api_computes(tmp_path, capsys, files, glyph_model):
    checkpoint, png, npz = files
    code, out, err = run_cli(capsys, "edit", "--model", checkpoint, "--image", png, "--to-class", "plus",
                             "--steps", 5, "--npz", tmp_path / "e.npz", "--quiet")  # fmt: skip
    assert code == 0, err
    assert "1 images edited (inversion, w = 2, 5 steps)" in out
    with Image.open(png) as im:
        x0 = torch.tensor(np.array(im)).float()[None, None] / 127.5 - 1
    expected = ddim.edit(glyph_model, x0, 3, steps=5)  # default guidance 2
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "e.npz")["x"]), expected)

    code, out, err = run_cli(capsys, "edit", "--model", checkpoint, "--images", npz, "--to-class", "1,2,3",
                             "--strength", 0.6, "--guidance", 4, "--seed", 2, "--steps", 5, "--quiet",
                             "--out-dir", tmp_path / "edits", "--compare", tmp_path / "c.png")  # fmt: skip
    assert code == 0, err
    assert "3 images edited (SDEdit, strength 0.6, w = 4, 5 steps)" in out
    code, out, err = run_cli(capsys, "edit", "--model", checkpoint, "--images", npz, "--to-class", "1,2,3",
                             "--strength", 0.6, "--method", "inversion", "--steps", 5, "--quiet",
                             "--npz", tmp_path / "p.npz")  # fmt: skip
    assert code == 0, err
    assert "3 images edited (inversion, strength 0.6, w = 2, 5 steps)" in out
    x0 = torch.from_numpy(np.load(npz)["x_test"]).float()[:, None] / 127.5 - 1
    expected = ddim.edit(glyph_model, x0, [1, 2, 3], steps=5, strength=0.6, method="inversion")
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "p.npz")["x"]), expected)
    assert sorted(p.name for p in (tmp_path / "edits").iterdir()) == [
        "000000.png",
        "000001.png",
        "000002.png",
    ]
    with Image.open(tmp_path / "c.png") as im:
        assert im.size == (3 * 56 + 4 * 2, 2 * 56 + 3 * 2)  # originals over edits, 8 px shown at 7×


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--to-class", "9"], "unknown class 9: the model's classes are 0 to 7"),
        (["--to-class", "1", "--guidance", "25"], "argument --guidance: must be in [0, 20], got 25"),
        (["--to-class", "1", "--strength", "0"], "argument --strength: must be in (0, 1], got 0"),
        (["--to-class", "1,2"], "one class for all 1 samples or one per sample, got 2"),
        (["--to-class", "1", "--strength", "0.5", "--from-class", "0"], "SDEdit (strength) does not use it"),
        (["--to-class", "1", "--method", "sdedit"], "SDEdit needs a strength"),
        (["--to-class", "1", "--seed", "5"], "--seed sets SDEdit's noise; inversion is deterministic"),
        (["--to-class", "1", "--strength", "0.5", "--method", "inversion", "--seed", "5"], "--seed sets"),
        (["--to-class", "1", "--strength", "0.05", "--steps", "10"], "so nothing would be edited"),
    ],
)
def test_cli_edit_refuses_bad_input_in_one_line(capsys, files, argv, message):
    checkpoint, png, _ = files
    code, _, err = run_cli(
        capsys, "edit", "--model", checkpoint, "--image", png, "--steps", 2, "--quiet", *argv
    )
    assert code == 2
    assert message in err
    assert err.count("\n") == 1


@needs_builtin("mnist-cond")
def test_cli_edit_uses_the_shipped_conditional_model_by_default(tmp_path, capsys):
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 13:16] = 255  # a "1"
    Image.fromarray(digit).save(tmp_path / "one.png")
    code, _, err = run_cli(capsys, "edit", "--image", tmp_path / "one.png", "--to-class", "7", "--steps", 2,
                             "--npz", tmp_path / "e.npz", "--quiet")  # fmt: skip
    assert code == 0, err
    x0 = torch.tensor(digit).float()[None, None] / 127.5 - 1
    expected = ddim.edit(ddim.load("mnist-cond"), x0, 7, steps=2)
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "e.npz")["x"]), expected)


def test_cli_edit_on_an_unconditional_model(capsys, files, tiny_checkpoint):
    _, png, _ = files
    code, _, err = run_cli(capsys, "edit", "--model", tiny_checkpoint, "--image", png, "--to-class", "8")
    assert code == 2
    assert "--to-class needs a class-conditional model" in err
    assert err.count("\n") == 1


def test_guidance_benchmark_runs_on_a_tiny_model(tmp_path, make_tiny_model):
    """benchmarks/guidance.py end to end on a random 28×28 conditional U-Net (its figures mean nothing)."""
    tiny = make_tiny_model(num_classes=10, resolution=28, ch_mult=(1, 2), attn_resolutions=())
    model = Model(tiny.net, tiny.schedule, (1, 28, 28))
    classifier = load_extractor("mnist").net.eval()
    shares = class_accuracy(model, classifier, n=1, steps=1, guidance=2)
    assert len(shares) == 10
    assert all(s in (0.0, 1.0) for s in shares)
    x0 = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = edit_trials(model, classifier, x0, torch.tensor([3, 9, 0]), steps=2, guidance=2, strength=0.5)
    assert (result.method, result.n) == ("sdedit 0.5", 3)
    assert 0 <= result.both <= min(result.success, result.closer) <= 1
    assert result.distance_edit > 0
    result = edit_trials(
        model, classifier, x0, torch.tensor([3, 9, 0]), steps=2, guidance=2, from_source=True
    )
    assert result.method == "inversion from the source class"
    result = edit_trials(model, classifier, x0, torch.tensor([3, 9, 0]), steps=4, guidance=2, strength=0.5,
                         method="inversion")  # fmt: skip
    assert result.method == "inversion to 0.5"
    guidance_grid(model, tmp_path / "g.png", [0, 2], per_cell=2, steps=1)
    with Image.open(tmp_path / "g.png") as im:
        assert im.size == (4 * 56 + 5 * 2, 10 * 56 + 11 * 2)  # 2 w × 2 samples a row, 28 px shown at 2×


def test_recognisable_benchmark_samples_classes_i_mod_10(monkeypatch):
    """benchmarks/recognisable.py --conditional asks for class i mod 10 at w; plain runs for no class."""
    import benchmarks.recognisable as rec

    calls = []

    def spy(model, n, **options):
        calls.append(options)
        return torch.zeros(n, 1, 28, 28)

    monkeypatch.setattr(rec.ddim, "sample", spy)
    r = rec.measure("a model", n=23, steps=2, conditional=True, guidance=3.0)
    assert calls[0]["classes"] == [i % 10 for i in range(23)]
    assert (calls[0]["guidance"], r.conditional, r.guidance) == (3.0, True, 3.0)
    r = rec.measure("a model", n=23, steps=2)
    assert "classes" not in calls[1]
    assert "guidance" not in calls[1]
    assert sum(r.class_shares) == pytest.approx(1)
