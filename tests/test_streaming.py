"""Sampling into a folder: one batch in memory, and a stopped run resumes to the files of an
uninterrupted one, byte for byte (same batches, same arithmetic), without redoing finished batches."""

import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddim
from ddim import io, streaming
from ddim.execution import Execution
from ddim.plan import resolve
from ddim.streaming import FolderRun
from helpers import run_cli

OPTIONS = {"seed": 3, "batch_size": 2, "steps": 3, "eta": 0.5}  # η > 0: the step noise must resume too


def sample_to_folder(model, out_dir, indices, *, noise=None, batch_size=None, precision="fp32", **plan):
    """`streaming.sample_to_folder` with the plan and execution of `ddim.sample`'s keywords."""
    how = Execution(batch_size=batch_size, precision=precision)
    return streaming.sample_to_folder(model, out_dir, indices, resolve(model, **plan), how, noise=noise)


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_the_folder_holds_the_samples_of_the_api(tmp_path, tiny_model):
    assert sample_to_folder(tiny_model, tmp_path, range(2, 7), **OPTIONS) == FolderRun(sampled=5, skipped=0)
    assert sorted(pngs(tmp_path)) == [f"{i:06d}.png" for i in range(2, 7)]
    x = ddim.sample(tiny_model, 5, start_index=2, **OPTIONS)
    for i, image in enumerate(io.to_uint8(x), start=2):
        with Image.open(tmp_path / f"{i:06d}.png") as png:
            assert np.array_equal(np.asarray(png), image[..., 0])


def test_given_latents_are_decoded_into_the_folder(tmp_path, tiny_model):
    z = torch.randn(14, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # x_T by index
    sample_to_folder(tiny_model, tmp_path, range(10, 13), noise=z, **OPTIONS)
    x = ddim.sample(tiny_model, noise=z[10:13], start_index=10, **OPTIONS)
    for i, image in enumerate(io.to_uint8(x), start=10):
        with Image.open(tmp_path / f"{i:06d}.png") as png:
            assert np.array_equal(np.asarray(png), image[..., 0])


def test_a_run_stopped_while_writing_resumes_to_the_same_bytes(tmp_path, tiny_model, monkeypatch):
    sample_to_folder(tiny_model, tmp_path / "whole", range(7), **OPTIONS)
    save_png = io.save_png

    def stop_at_the_fourth_file(array, path):
        if path.name == "000003.png":
            raise KeyboardInterrupt
        return save_png(array, path)

    monkeypatch.setattr(io, "save_png", stop_at_the_fourth_file)
    with pytest.raises(KeyboardInterrupt):
        sample_to_folder(tiny_model, tmp_path / "stopped", range(7), **OPTIONS)
    monkeypatch.undo()
    assert sorted(pngs(tmp_path / "stopped")) == ["000000.png", "000001.png", "000002.png"]
    # batch [0, 2) is kept; [2, 4), half written, is sampled again in full, then the rest
    resumed = sample_to_folder(tiny_model, tmp_path / "stopped", range(7), **OPTIONS)
    assert resumed == FolderRun(sampled=5, skipped=2)
    assert pngs(tmp_path / "stopped") == pngs(tmp_path / "whole")
    assert sample_to_folder(tiny_model, tmp_path / "stopped", range(7), **OPTIONS) == FolderRun(0, 7)


def test_memory_holds_one_batch_at_a_time(tmp_path, tiny_model, monkeypatch):
    sizes, outputs = [], []
    run = streaming.run

    def watched(*args, **kwargs):
        assert all(ref() is None for ref in outputs)  # every earlier batch has been freed
        x = run(*args, **kwargs)
        sizes.append(len(x))
        outputs.append(weakref.ref(x))
        return x

    monkeypatch.setattr(streaming, "run", watched)
    sample_to_folder(tiny_model, tmp_path, range(7), **{**OPTIONS, "batch_size": 3})
    assert sizes == [3, 3, 1]
    assert all(ref() is None for ref in outputs)


def test_sample_out_dir_grows_a_smaller_run_to_the_files_of_a_whole_one(tmp_path, capsys, tiny_checkpoint):
    common = ["sample", "--model", tiny_checkpoint, "--steps", 3, "--eta", 0.5, "--seed", 1,
              "--batch-size", 2, "--quiet"]  # fmt: skip
    assert run_cli(capsys, *common, "-n", 8, "--out-dir", tmp_path / "whole")[0] == 0
    code, out, err = run_cli(capsys, *common, "-n", 5, "--out-dir", tmp_path / "grown")
    assert code == 0, err
    assert out.startswith("5 samples, 3 steps")
    code, out, err = run_cli(capsys, *common, "-n", 8, "--out-dir", tmp_path / "grown")
    assert code == 0, err
    assert out.startswith("4 samples, 3 steps")  # batches [4, 6) (000004.png redone) and [6, 8)
    assert "; 4 finished earlier, kept" in out
    assert pngs(tmp_path / "grown") == pngs(tmp_path / "whole")
    code, out, _ = run_cli(capsys, *common, "-n", 8, "--out-dir", tmp_path / "grown")
    assert out.startswith("0 samples")
    assert "8 finished earlier" in out


def test_a_folder_never_mixes_two_runs(tmp_path, tiny_model, make_tiny_model):
    sample_to_folder(tiny_model, tmp_path, range(3), **OPTIONS)
    sample_to_folder(tiny_model, tmp_path, range(5), **{**OPTIONS, "batch_size": 4})  # grows: fine
    for change, message in [
        ({"seed": 4}, r"another seed \(3, now 4\)"),
        ({"eta": 0.0}, r"another eta \(0.5, now 0.0\)"),
        ({"steps": 4}, "another timesteps"),
        ({"precision": "bf16"}, r"another precision \('fp32', now 'bf16'\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            sample_to_folder(tiny_model, tmp_path, range(5), **{**OPTIONS, **change})
    with pytest.raises(ValueError, match="another model"):
        sample_to_folder(make_tiny_model(seed=1), tmp_path, range(5), **OPTIONS)
    (tmp_path / streaming.RECORD).unlink()
    with pytest.raises(ValueError, match="holds PNGs that no resumable run recorded"):
        sample_to_folder(tiny_model, tmp_path, range(5), **OPTIONS)


def test_sample_out_dir_of_another_seed_is_a_one_line_error(tmp_path, capsys, tiny_checkpoint):
    common = ["sample", "--model", tiny_checkpoint, "-n", 2, "--steps", 2, "--out-dir", tmp_path, "--quiet"]
    assert run_cli(capsys, *common, "--seed", 1)[0] == 0
    code, _, err = run_cli(capsys, *common, "--seed", 2)
    assert code == 2
    assert err.startswith(f"ddim sample: error: {tmp_path} holds samples of another seed (1, now 2)")
    assert len(err.strip().splitlines()) == 1


def test_out_dir_beside_other_outputs_keeps_to_the_folder_record(tmp_path, capsys, tiny_checkpoint):
    """`--out-dir` with `--npz` writes all PNGs at once: into a streamed folder only as the same run."""
    common = ["sample", "--model", tiny_checkpoint, "--steps", 2, "--out-dir", tmp_path / "s", "--quiet"]
    assert run_cli(capsys, *common, "-n", 4)[0] == 0
    streamed = pngs(tmp_path / "s")
    code, _, err = run_cli(capsys, *common, "-n", 2, "--seed", 1, "--npz", tmp_path / "x.npz")
    assert code == 2
    assert err.startswith(f"ddim sample: error: {tmp_path / 's'} holds samples of another seed (0, now 1)")
    assert pngs(tmp_path / "s") == streamed
    assert not (tmp_path / "x.npz").exists()
    assert run_cli(capsys, *common, "-n", 2, "--npz", tmp_path / "x.npz")[0] == 0  # the same run: fine
    assert pngs(tmp_path / "s") == streamed


def test_a_record_that_is_not_an_object_is_a_one_line_error(tmp_path, capsys, tiny_checkpoint):
    (tmp_path / streaming.RECORD).write_text("[1]")
    code, _, err = run_cli(capsys, "sample", "--model", tiny_checkpoint, "-n", 1, "--steps", 2,
                           "--out-dir", tmp_path, "--quiet")  # fmt: skip
    assert code == 2
    assert f"{tmp_path / streaming.RECORD} is not readable (a JSON list, not an object)" in err
    assert len(err.strip().splitlines()) == 1
