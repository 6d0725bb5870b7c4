import json
import struct

import pytest
import safetensors.torch
import torch

import ddim
from ddim.checkpoint import FORMAT_VERSION, CheckpointError, read_metadata
from ddim.loading import builtin_names
from ddim.models import Model
from ddim.toy import toy_model


def _assert_same_model(a: Model, b: Model) -> None:
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert torch.equal(a.schedule.betas, b.schedule.betas)
    assert (a.image_shape, a.prediction, a.info) == (b.image_shape, b.prediction, b.info)
    assert a.net.config == b.net.config
    assert (a.num_classes, a.class_names) == (b.num_classes, b.class_names)


def test_half_precision_storage_rounds_each_weight_once(tmp_path, tiny_model):
    path = ddim.save(tiny_model, tmp_path / "h.safetensors", dtype=torch.float16)
    loaded = ddim.load(path)
    for (name, w), (_, w16) in zip(
        tiny_model.net.state_dict().items(), loaded.net.state_dict().items(), strict=True
    ):
        assert w16.dtype == w.dtype, name  # back in the network's own float32
        assert torch.equal(w16, w.half().float()), name
    torch.testing.assert_close(loaded.schedule.betas, tiny_model.schedule.betas, rtol=0, atol=0)
    assert path.stat().st_size < 0.6 * ddim.save(tiny_model, tmp_path / "f.safetensors").stat().st_size
    with pytest.raises(ValueError, match="floating-point"):
        ddim.save(tiny_model, tmp_path / "i.safetensors", dtype=torch.int8)


def test_unet_round_trip_is_exact(tmp_path, make_tiny_model):
    model = make_tiny_model()
    model = Model(
        model.net, ddim.NoiseSchedule.cosine(100), model.image_shape, "v", {"steps": 123, "note": "ü"}
    )
    loaded = ddim.load(ddim.save(model, tmp_path / "m.safetensors"))
    _assert_same_model(model, loaded)
    assert not loaded.net.training
    torch.testing.assert_close(
        ddim.sample(model, 2, steps=3, seed=0), ddim.sample(loaded, 2, steps=3, seed=0)
    )


def test_toy_round_trip_is_exact(tmp_path):
    model = toy_model(size=8)
    _assert_same_model(model, ddim.load(ddim.save(model, tmp_path / "toy.safetensors")))


def test_conditional_round_trip_keeps_classes_and_names(tmp_path, make_tiny_model):
    tiny = make_tiny_model(num_classes=3)
    model = Model(tiny.net, tiny.schedule, tiny.image_shape, "eps", {"note": 1}, ("cat", "dog", "owl"))
    path = ddim.save(model, tmp_path / "c.safetensors")
    meta = read_metadata(path)
    assert (meta["net"]["num_classes"], meta["class_names"]) == (3, ["cat", "dog", "owl"])
    loaded = ddim.load(path)
    _assert_same_model(model, loaded)
    assert "net.class_embedding.weight" in safetensors.torch.load_file(path)
    x = ddim.sample(loaded, 2, steps=3, seed=0, classes=["owl", 0], guidance=2)
    torch.testing.assert_close(x, ddim.sample(model, 2, steps=3, seed=0, classes=[2, 0], guidance=2))
    toy = toy_model(size=8, conditional=True)  # the analytic conditional mixture too
    _assert_same_model(toy, ddim.load(ddim.save(toy, tmp_path / "toy.safetensors")))


def test_conditional_checkpoints_with_wrong_class_names_are_refused(tmp_path, make_tiny_model):
    tiny = make_tiny_model(num_classes=3)
    path = ddim.save(
        Model(tiny.net, tiny.schedule, tiny.image_shape, class_names=("a", "b", "c")), tmp_path / "c.st"
    )
    _rewrite(path, edit_meta=lambda m: m.update(class_names=["a", "b"]))
    _expect_error(path, r"class_names must be 3 distinct names .* got \['a', 'b'\]")


def test_unconditional_checkpoints_are_unchanged(tiny_checkpoint):
    meta = read_metadata(tiny_checkpoint)
    assert "class_names" not in meta
    assert "num_classes" not in meta["net"]
    model = ddim.load(tiny_checkpoint)
    assert (model.num_classes, model.class_names) == (None, ())
    if "mnist" in builtin_names():  # the shipped weights, saved before classes existed
        mnist = ddim.load("mnist")
        assert (mnist.num_classes, mnist.class_names, mnist.num_parameters) == (None, (), 2_734_945)


def test_metadata_is_readable_json(tiny_checkpoint):
    meta = read_metadata(tiny_checkpoint)
    assert meta["format"] == "ddim"
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["net"]["type"] == "unet"
    assert meta["image_shape"] == [1, 8, 8]


def test_builtin_names_and_shipped_weights(tmp_path, monkeypatch, tiny_model):
    assert "toy" in builtin_names()
    assert isinstance(ddim.load("toy"), Model)
    monkeypatch.setattr("ddim.checkpoint._weights_dir", lambda: tmp_path / "weights")
    assert builtin_names() == ["toy"]  # no weights folder: still works
    ddim.save(tiny_model, tmp_path / "weights" / "tiny.safetensors")
    assert builtin_names() == ["tiny", "toy"]
    _assert_same_model(ddim.load("tiny"), tiny_model)


def _expect_error(path, message):
    with pytest.raises(CheckpointError, match=message) as info:
        ddim.load(path)
    assert "\n" not in str(info.value)  # one line, for the CLI


def test_missing_path_and_folder(tmp_path):
    _expect_error(tmp_path / "nope.safetensors", "no such file, and not a built-in model")
    _expect_error(tmp_path, "is a folder")


def test_truncated_file(tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    tiny_checkpoint.write_bytes(data[: len(data) // 2])
    _expect_error(tiny_checkpoint, "not a readable safetensors file")


def test_not_safetensors(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"PK\x03\x04 this is a zip, or a pickle, or anything")
    _expect_error(tmp_path / "a.safetensors", "not a readable safetensors file")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    _expect_error(tmp_path / "empty.safetensors", "not a readable safetensors file")


def test_foreign_safetensors_without_our_metadata(tmp_path):
    path = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"conv.weight": torch.zeros(2, 2)}, path)
    _expect_error(path, "not a ddim checkpoint")


def _rewrite(path, edit_meta=None, edit_tensors=None):
    tensors = safetensors.torch.load_file(path)
    meta = read_metadata(path)
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    safetensors.torch.save_file(tensors, path, metadata={"ddim": json.dumps(meta)})


def test_newer_format_version_is_refused(tiny_checkpoint):
    _rewrite(tiny_checkpoint, edit_meta=lambda m: m.update(format_version=FORMAT_VERSION + 1))
    _expect_error(tiny_checkpoint, "upgrade ddim")


def test_unknown_net_type_and_bad_config(tiny_checkpoint, tmp_path):
    _rewrite(tiny_checkpoint, edit_meta=lambda m: m["net"].update(type="transformer"))
    _expect_error(tiny_checkpoint, "unknown net type 'transformer'")
    other = ddim.save(ddim.load("toy"), tmp_path / "t.safetensors")
    _rewrite(other, edit_meta=lambda m: m.pop("image_shape"))
    _expect_error(other, "missing field 'image_shape'")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"image_shape": [3, 8, 8]}, r"image_shape \[3, 8, 8\] is not the network's input shape \[1, 8, 8\]"),
        ({"image_shape": [1, 7, 7]}, r"image_shape \[1, 7, 7\] is not the network's input shape"),
        ({"image_shape": 28}, "image_shape must be a list of positive integers, got 28"),
        ({"image_shape": [1, "8", 8]}, r"image_shape must be a list of positive integers, got \[1, '8', 8\]"),
        ({"image_shape": [1, 16, 16]}, r"image_shape \[1, 16, 16\] is not the network's input shape"),
        ({"net": 5}, "unknown net type 5"),
        ({"net": "unet"}, "unknown net type 'unet': net must be a table of settings"),
    ],
)
def test_a_config_at_odds_with_its_network_is_refused(tiny_checkpoint, edit, message):
    _rewrite(tiny_checkpoint, edit_meta=lambda m: m.update(edit))
    _expect_error(tiny_checkpoint, message)


def test_a_toy_checkpoint_states_its_own_shape(tmp_path):
    toy = ddim.save(toy_model(size=8), tmp_path / "toy.safetensors")
    _rewrite(toy, edit_meta=lambda m: m.update(image_shape=[1, 4, 16]))
    _expect_error(toy, r"image_shape \[1, 4, 16\] is not the network's input shape \[1, 8, 8\]")


def test_weights_that_do_not_fit_the_config(tiny_checkpoint):
    _rewrite(tiny_checkpoint, edit_tensors=lambda t: t.pop("net.conv_out.bias"))
    _expect_error(tiny_checkpoint, r"missing \['net.conv_out.bias'\]")


def test_wrong_shape_integer_and_nan_weights(tmp_path, tiny_model):
    a = ddim.save(tiny_model, tmp_path / "a.safetensors")
    _rewrite(a, edit_tensors=lambda t: t.update({"net.conv_out.bias": torch.zeros(5)}))
    _expect_error(a, "net.conv_out.bias has shape")
    b = ddim.save(tiny_model, tmp_path / "b.safetensors")
    _rewrite(b, edit_tensors=lambda t: t["net.conv_in.weight"].view(-1).__setitem__(0, float("nan")))
    _expect_error(b, "NaN")
    c = ddim.save(tiny_model, tmp_path / "c.safetensors")
    _rewrite(c, edit_tensors=lambda t: t.update({"net.conv_in.weight": t["net.conv_in.weight"].int()}))
    _expect_error(c, "net.conv_in.weight holds torch.int32 values, the architecture needs floating point")


def test_header_is_plain_json_no_code(tiny_checkpoint):
    """The format is data only: an 8-byte length, a JSON header, raw tensor bytes."""
    raw = tiny_checkpoint.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert json.loads(header["__metadata__"]["ddim"])["format"] == "ddim"
    assert header["schedule.betas"]["dtype"] == "F64"
