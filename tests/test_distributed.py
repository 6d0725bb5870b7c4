"""torchrun on the CPU: 2 processes over gloo give the results of 1 process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ddim
from ddim.train_config import TrainConfig, to_toml

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this PyTorch has no gloo backend",
)


def ddim_cmd(*argv, processes=1):
    """Run `ddim ARGV` in `processes` processes (torchrun when > 1); returns the completed process."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    cmd = [sys.executable, *(launcher if processes > 1 else []), "-m", "ddim", *map(str, argv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("n", [5, 6])  # 5: not divisible by the world size
def test_two_processes_sample_the_images_of_one(tmp_path, tiny_checkpoint, n):
    """Bit for bit: with one sample a batch, each image's arithmetic is the same whoever computes it
    (larger batches may change float32 rounding, by ~1e-7 of the values, as in test_sampling)."""
    common = ["sample", "--model", tiny_checkpoint, "-n", n, "--steps", 4, "--eta", 0.5, "--seed", 3,
              "--batch-size", 1, "--quiet"]  # fmt: skip
    ddim_cmd(*common, "--npz", tmp_path / "one.npz", "--out-dir", tmp_path / "one")
    ddim_cmd(*common, "--npz", tmp_path / "two.npz", "--out-dir", tmp_path / "two", processes=2)
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert np.array_equal(two["x"], one["x"])
    names = sorted(p.name for p in (tmp_path / "two").glob("*.png"))
    assert names == [f"{i:06d}.png" for i in range(n)]  # none missing, none twice
    for name in names:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_two_processes_resume_the_folder_of_a_stopped_one_process_run(tmp_path, tiny_checkpoint):
    """`--out-dir` alone streams: each rank skips the finished batches of its own share."""
    common = ["sample", "--model", tiny_checkpoint, "--steps", 4, "--eta", 0.5, "--seed", 3,
              "--batch-size", 1, "--quiet"]  # fmt: skip
    ddim_cmd(*common, "-n", 6, "--out-dir", tmp_path / "whole")
    ddim_cmd(*common, "-n", 3, "--out-dir", tmp_path / "resumed")  # "stopped" after 3 images
    result = ddim_cmd(*common, "-n", 6, "--out-dir", tmp_path / "resumed", processes=2)
    assert result.stdout.startswith("3 samples, 4 steps")  # rank 0's share was done, rank 1's not
    assert "3 finished earlier, kept" in result.stdout
    whole, resumed = (sorted((tmp_path / d).glob("*.png")) for d in ("whole", "resumed"))
    assert [p.name for p in resumed] == [p.name for p in whole] == [f"{i:06d}.png" for i in range(6)]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(whole, resumed, strict=True))


def test_two_process_training_equals_one_and_resumes_in_one(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, size=(48, 8, 8), dtype=np.uint8))
    net = {"resolution": 8, "in_channels": 1, "out_channels": 1, "ch": 8, "ch_mult": [1, 2],
           "num_res_blocks": 1, "attn_resolutions": [4], "dropout": 0.0, "norm_groups": 4}  # fmt: skip
    config = TrainConfig.from_dict(
        {
            "data": str(tmp_path / "d.npz"),
            "net": net,
            "steps": 6,
            "batch_size": 8,
            "warmup_steps": 2,
            "lr_decay": "constant",  # so that --steps 4, then 6, is one schedule
            "log_every": 1,
            "checkpoint_every": 4,
            "sample_every": 0,
            "num_timesteps": 50,
            "hflip": True,
            "precision": "fp32",
        }
    )  # fmt: skip (bf16 rounding differs by batch size)
    (tmp_path / "c.toml").write_text(to_toml(config.to_dict()))
    ddim_cmd("train", "--config", tmp_path / "c.toml", "--out", tmp_path / "one", "--quiet")
    ddim_cmd("train", "--config", tmp_path / "c.toml", "--out", tmp_path / "two", "--steps", 4, "--quiet",
             processes=2)  # fmt: skip

    def logged(run, key="loss"):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)[key] for line in lines]

    np.testing.assert_allclose(logged("two"), logged("one")[:4], rtol=1e-5)
    # gradients are averaged, not summed, over the processes (Adam alone would not tell)
    np.testing.assert_allclose(logged("two", "grad_norm"), logged("one", "grad_norm")[:4], rtol=1e-5)
    ema_one4 = ddim.load(tmp_path / "two" / "checkpoints" / "step-00000004.safetensors")
    assert ema_one4.info["step"] == 4
    ddim_cmd("train", "--out", tmp_path / "two", "--resume", "--steps", 6, "--quiet")  # now one process
    np.testing.assert_allclose(logged("two"), logged("one"), rtol=1e-5)
    # Weights: Adam divides by √v, so a parameter whose gradient is ~0 can move differently by
    # float noise; compare the whole state by its norm instead of element by element.
    a, b = (load_file(tmp_path / run / "model.safetensors") for run in ("one", "two"))
    diff = sum((a[k] - b[k]).double().pow(2).sum() for k in a).sqrt()
    norm = sum(a[k].double().pow(2).sum() for k in a).sqrt()
    assert diff / norm < 1e-5, (diff / norm).item()  # measured 2.8e-6: float32 summation order


EVALUATION = """
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, {tests!r})
from conftest import tiny_features, tiny_unet_model

from ddim import distributed
from ddim.evaluate import SweepConfig, evaluate_cell
from ddim.metrics import feature_stats

distributed.init(torch.device("cpu"))
images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (37, 1, 8, 8), dtype=np.uint8))
extractor = tiny_features()
ref = feature_stats(extractor, images, batch_size=5)  # 37 images: not divisible by 2 processes
config = SweepConfig(steps=(4,), etas=(0.5,), n=13, seed=3, batch_size=1, kid_subset_size=8)
cell = evaluate_cell(tiny_unet_model(), extractor, ref, 4, 0.5, config)
if distributed.is_main():
    np.savez(sys.argv[1], mu=ref.mu, cov=ref.cov, features=ref.features, fid=cell.fid, kid=cell.kid)
distributed.shutdown()
"""


def test_evaluation_statistics_from_two_processes_equal_one(tmp_path):
    script = tmp_path / "evaluation.py"
    script.write_text(EVALUATION.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for cmd in ([sys.executable], launcher):
        out = tmp_path / f"{len(cmd)}.npz"
        result = subprocess.run(
            [*cmd, str(script), str(out)], capture_output=True, text=True, timeout=300, env=env
        )
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = np.load(tmp_path / "1.npz"), np.load(tmp_path / f"{len(launcher)}.npz")
    assert np.array_equal(two["features"], one["features"])  # each image's features, in order
    np.testing.assert_array_equal(two["mu"], one["mu"])  # merged in the same batches: equal bits
    np.testing.assert_array_equal(two["cov"], one["cov"])
    assert two["fid"] == one["fid"]  # the 13 samples, sharded 6 + 7, are the same images
    assert two["kid"] == one["kid"]
