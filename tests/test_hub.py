"""Published models by name: download → verify → convert → sample, against a loopback server.

The server (tests/loopback.py) serves a small official-format checkpoint: the state_dict of a
tiny U-Net saved with torch.save, as pesser/pytorch_diffusion's files are. A registry entry for it
is added next to the real ones (their URLs and MD5s are the published ones; nothing here reaches
the internet), and `$DDIM_MIRROR` points the downloads at the server, as a user's mirror would.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys

import pytest
import safetensors.torch
import torch

import ddim
from conftest import tiny_unet_model
from ddim import hub
from helpers import run_cli
from loopback import Loopback

NAME, PATH = "ddpm-tiny", "ema_diffusion_tiny_model/model-1000.ckpt"


def official_net(seed: int = 0) -> ddim.Model:
    """A small U-Net with the official schedule and GroupNorm(32), as every official model has."""
    return tiny_unet_model(seed, num_timesteps=1000, ch=32, norm_groups=32)


def official_bytes(seed: int = 0) -> tuple[bytes, dict[str, torch.Tensor]]:
    state = official_net(seed).net.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue(), state


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(the server, the served bytes, their state_dict), with the registry entry and $DDIM_HOME set."""
    data, state = official_bytes()
    entry = hub.Published(NAME, "ema_tiny", "0", PATH, hashlib.md5(data).hexdigest(), "tiny", 8, 0)
    monkeypatch.setitem(hub.PUBLISHED, NAME, entry)
    monkeypatch.setenv("DDIM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DDIM_DOWNLOAD_TIMEOUT", "0.5")
    for var in ("DDIM_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with Loopback({PATH: data}) as server:
        monkeypatch.setenv("DDIM_MIRROR", server.url)
        yield server, data, state


def cache_files(tmp_path) -> list[str]:
    home = tmp_path / "home"
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()) if home.exists() else []


def assert_same_weights(model: ddim.Model, state: dict[str, torch.Tensor]) -> None:
    ours = model.net.state_dict()
    assert ours.keys() == state.keys()
    assert all(torch.equal(ours[k], v) for k, v in state.items())


def test_sample_downloads_verifies_converts_once_then_reads_the_cache(served, tmp_path, capsys):
    server, _, state = served
    code, _, err = run_cli(capsys, "sample", "--model", NAME, "-n", "2", "--steps", "3",
                           "--out", tmp_path / "s.png", "--quiet")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "s.png").is_file()
    assert cache_files(tmp_path) == [f"models/{NAME}.safetensors"]  # converted; no .part left
    model = ddim.load(NAME)  # from the cache: no second request
    assert server.gets(f"/{PATH}") == [None]
    assert_same_weights(model, state)
    assert model.info["imported_from"] == f"{server.url}/{PATH}"
    assert model.info["md5"] == hub.PUBLISHED[NAME].md5
    assert ddim.checkpoint.read_metadata(hub.cached_path(NAME))["format"] == "ddim"  # native
    official = ddim.NoiseSchedule.linear(1000, 1e-4, 0.02)  # what every official model assumes
    torch.testing.assert_close(model.schedule.betas, official.betas, rtol=0, atol=0)
    expected = ddim.Model(official_net().net, official, model.image_shape)
    assert torch.equal(ddim.sample(model, n=2, steps=3, seed=1), ddim.sample(expected, n=2, steps=3, seed=1))


@pytest.mark.parametrize("fault", ["truncate", "stall"])
def test_a_broken_transfer_is_one_line_and_the_next_attempt_resumes(served, tmp_path, capsys, fault):
    server, data, state = served
    server.faults[PATH] = fault
    code, _, err = run_cli(capsys, "download", NAME, "--quiet")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    what = "ended early" if fault == "truncate" else "stalled (no data for 0.5 s)"
    assert what in err
    assert "run the same command again to resume" in err
    assert f"at {len(data) // 2:,} of {len(data):,} bytes" in err
    assert cache_files(tmp_path) == [f"downloads/{NAME}.part"]  # never the final name
    assert hub.part_path(NAME).read_bytes() == data[: len(data) // 2]

    server.release.clear()
    code, out, err = run_cli(capsys, "download", NAME, "--quiet")
    assert code == 0, err
    assert server.gets(f"/{PATH}") == [None, f"bytes={len(data) // 2}-"]  # only the rest was asked for
    assert cache_files(tmp_path) == [f"models/{NAME}.safetensors"]
    assert str(hub.cached_path(NAME)) in out
    assert_same_weights(ddim.load(NAME), state)


def test_a_server_that_ignores_the_range_request_sends_it_all_again(served, tmp_path):
    server, _data, state = served
    hub.part_path(NAME).parent.mkdir(parents=True)
    hub.part_path(NAME).write_bytes(b"\0" * 100)  # a part that is not even a prefix of the file
    server.faults[PATH] = "ignore-range"
    assert_same_weights(ddim.load(NAME), state)
    assert server.gets(f"/{PATH}") == ["bytes=100-"]
    assert cache_files(tmp_path) == [f"models/{NAME}.safetensors"]


def test_a_range_answer_that_starts_elsewhere_starts_over(served, tmp_path):
    server, data, state = served
    hub.part_path(NAME).parent.mkdir(parents=True)
    hub.part_path(NAME).write_bytes(data[:100])
    server.faults[PATH] = "wrong-range"  # 206, but from byte 1: appending it would corrupt the file
    assert_same_weights(ddim.load(NAME), state)
    assert server.gets(f"/{PATH}") == ["bytes=100-", None]
    assert cache_files(tmp_path) == [f"models/{NAME}.safetensors"]


def test_a_part_as_long_as_the_file_starts_over(served, tmp_path):
    server, data, state = served
    hub.part_path(NAME).parent.mkdir(parents=True)
    hub.part_path(NAME).write_bytes(b"\0" * len(data))  # 416 for the range; then the whole file
    assert_same_weights(ddim.load(NAME), state)
    assert server.gets(f"/{PATH}") == [f"bytes={len(data)}-", None]


def test_a_wrong_checksum_is_one_line_and_leaves_nothing(served, tmp_path, capsys):
    server, data, _ = served
    server.files[PATH] = data[:-1] + bytes([data[-1] ^ 1])  # one bit flipped
    code, _, err = run_cli(capsys, "sample", "--model", NAME, "--out", tmp_path / "s.png")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert f"checksum mismatch (MD5 {hashlib.md5(server.files[PATH]).hexdigest()}" in err
    assert f"published {hub.PUBLISHED[NAME].md5}" in err
    assert cache_files(tmp_path) == []
    assert not (tmp_path / "s.png").exists()


def test_404_is_one_line_and_leaves_nothing(served, tmp_path, capsys):
    server, _, _ = served
    server.faults[PATH] = "404"
    code, _, err = run_cli(capsys, "download", NAME)
    assert code == 2
    assert err.strip().splitlines() == [
        f"ddim download: error: {server.url}/{PATH}: HTTP 404 Not Found; check the name, or the mirror "
        f"(DDIM_MIRROR) [{NAME} would be cached at {hub.cached_path(NAME)}]"
    ]
    assert cache_files(tmp_path) == []


@pytest.mark.parametrize("name", [NAME, "ddpm-cifar10"])
def test_unreachable_host_names_the_url_and_the_cache_path(served, tmp_path, capsys, monkeypatch, name):
    monkeypatch.setenv("DDIM_MIRROR", "http://127.0.0.1:9")  # the discard port: nothing listens
    code, _, err = run_cli(capsys, "sample", "--model", name)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(
        f"ddim sample: error: cannot reach http://127.0.0.1:9/{hub.PUBLISHED[name].path} ("
    )
    assert line.endswith(f"[{name} would be cached at {hub.cached_path(name)}]")
    assert cache_files(tmp_path) == []


def test_offline_with_nothing_cached_fails_without_a_request(served, tmp_path, capsys, monkeypatch):
    server, _, state = served
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(capsys, "sample", "--model", NAME)
    assert code == 2
    assert f"{NAME} is not cached at {hub.cached_path(NAME)} and the network is off" in err
    assert f"{server.url}/{PATH}" in err
    assert server.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    ddim.load(NAME)  # once cached, offline is fine
    monkeypatch.setenv("DDIM_OFFLINE", "1")
    assert_same_weights(ddim.load(NAME), state)


def test_the_official_urls_and_checksums_are_the_published_ones(monkeypatch):
    monkeypatch.delenv("DDIM_MIRROR", raising=False)
    pub = hub.PUBLISHED["ddpm-cifar10"]  # pesser/pytorch_diffusion ckpt_util.py: ema_cifar10
    assert pub.url == "https://heibox.uni-heidelberg.de/f/2e4f01e2d9ee49bab1d5/?dl=1"
    assert pub.ema
    assert pub.md5 == "1fa350b952534ae442b1d5235cce5cd3"
    assert {n: p.md5 for n, p in hub.PUBLISHED.items() if p.ema} == {
        "ddpm-cifar10": "1fa350b952534ae442b1d5235cce5cd3",
        "ddpm-lsun-church": "fdc68a23938c2397caba4a260bc2445f",
        "ddpm-lsun-bedroom": "1921fa46b66a3665e450e42f36c2720f",
        "ddpm-lsun-cat": "646f23f4821f2459b8bafc57fd824558",
    }  # the MD5s issue 26 quotes


def test_models_lists_known_and_cached(served, capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    assert "ddpm-lsun-church" in out
    assert "not cached" in out
    ddim.load(NAME)
    code, out, _ = run_cli(capsys, "models")
    line = next(line for line in out.splitlines() if line.startswith(NAME + " "))
    assert str(hub.cached_path(NAME)) in line
    assert f"{hub.cached_path(NAME).stat().st_size:,}" in line


def test_bad_timeout_setting_is_one_line(served, capsys, monkeypatch):
    monkeypatch.setenv("DDIM_DOWNLOAD_TIMEOUT", "soon")
    code, _, err = run_cli(capsys, "download", NAME)
    assert code == 2
    assert "DDIM_DOWNLOAD_TIMEOUT must be a number of seconds > 0, got 'soon'" in err


def test_unknown_name_is_refused(served, capsys):
    code, _, err = run_cli(capsys, "download", "ddpm-imagenet")
    assert code == 2
    assert "unknown model name 'ddpm-imagenet'; known: ddpm-cifar10" in err


# --- Hugging Face Hub ids, through huggingface_hub against a loopback Hub -------------------

REPO = "someone/ddpm-tiny"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, make_tiny_model):
    """(the server, the model its repository holds): a diffusers DDPMPipeline folder as a Hub repo."""
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    from ddim.export import to_diffusers

    model = make_tiny_model(5)
    folder = to_diffusers(model, tmp_path / "repo")
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for var in ("DDIM_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with Loopback(files, hub_repo=REPO) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server, model


def test_a_hub_id_is_fetched_once_into_the_hub_cache(fake_hub, tmp_path, monkeypatch):
    server, model = fake_hub
    loaded = ddim.load(REPO)
    assert_same_weights(loaded, model.net.state_dict())
    assert torch.equal(loaded.schedule.betas, model.schedule.betas)
    assert loaded.info["imported_from"] == f"hf://{REPO}"
    assert loaded.info["snapshot"].startswith(str(tmp_path / "hf-cache"))
    fetched = [p for m, p, _ in server.requests if m == "GET" and "/resolve/" in p]
    assert sorted(p.rsplit("/", 1)[-1] for p in fetched) == [
        "config.json", "diffusion_pytorch_model.safetensors", "model_index.json", "scheduler_config.json"
    ]  # fmt: skip
    server.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_same_weights(ddim.load(REPO), model.net.state_dict())  # from the cache
    assert server.requests == []


def test_a_revision_is_pinned(fake_hub):
    server, model = fake_hub
    assert_same_weights(ddim.load(f"{REPO}@v1.0"), model.net.state_dict())
    assert ("GET", f"/api/models/{REPO}/revision/v1.0", None) in server.requests
    server.requests.clear()
    ddim.load(f"{REPO}@{server.hub_commit}")  # a commit hash needs no look-up of the revision
    assert not any("/revision/" in p for _, p, _ in server.requests)


def test_old_repositories_with_bin_weights_load(fake_hub):
    server, model = fake_hub
    weights = server.files.pop("unet/diffusion_pytorch_model.safetensors")
    buffer = io.BytesIO()
    torch.save(safetensors.torch.load(weights), buffer)
    server.files["unet/diffusion_pytorch_model.bin"] = buffer.getvalue()
    assert_same_weights(ddim.load(REPO), model.net.state_dict())


def test_hub_offline_with_nothing_cached_is_one_line(fake_hub, capsys, monkeypatch):
    server, _ = fake_hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(capsys, "sample", "--model", REPO)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert f"no such file or folder, and the Hub model {REPO}@main is not in the Hub cache" in line
    assert "the network is off" in line
    assert server.requests == []


def test_an_unknown_hub_repository_is_one_line(fake_hub, capsys):
    code, _, err = run_cli(capsys, "info", "someone/missing")
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "no such file, and no model someone/missing on the Hub" in line


def test_a_hub_id_offline_in_a_fresh_process_names_the_cache(tmp_path):
    # a fresh interpreter: nothing of huggingface_hub imported beforehand, its default endpoint
    pytest.importorskip("huggingface_hub")
    env = {k: v for k, v in os.environ.items() if k != "HF_ENDPOINT"}
    env.update(HF_HUB_CACHE=str(tmp_path / "hf-cache"), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "ddim", "info", "someone/missing"],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert f"the Hub model someone/missing@main is not in the Hub cache {tmp_path / 'hf-cache'}" in line
    assert line.endswith(
        "and the network is off (HF_HUB_OFFLINE/DDIM_OFFLINE) (https://huggingface.co/someone/missing)"
    )


def test_download_fetches_a_hub_id(fake_hub, capsys):
    code, out, err = run_cli(capsys, "download", REPO, "--quiet")
    assert code == 0, err
    assert out.startswith("cached: ")
    assert "snapshots" in out


def test_info_describes_the_cached_copy(fake_hub, served, capsys):
    code, out, err = run_cli(capsys, "info", REPO)
    assert code == 0, err
    assert "format:         diffusers UNet2DModel folder" in out
    code, out, err = run_cli(capsys, "info", NAME)
    assert code == 0, err
    assert "format:         native ddim checkpoint" in out
    assert f"{hub.cached_path(NAME).stat().st_size:,} bytes" in out
