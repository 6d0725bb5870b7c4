"""Published models by name: downloaded once, verified, converted, cached.

Two kinds of names, both accepted by `ddim.load` (and so by every `--model`):

- the official DDPM checkpoints (Ho et al. 2020, the PyTorch ports of pesser/pytorch_diffusion
  that the DDIM code uses), by short names such as `ddpm-cifar10` (the EMA weights; add
  `-non-ema` for the training weights). They come from their published URLs (or `$DDIM_MIRROR`,
  a base URL holding the same relative paths), are checked against their published MD5, converted
  once to the native format and kept as `$DDIM_HOME/models/NAME.safetensors` (`$DDIM_HOME`
  defaults to ~/.cache/ddim). A stopped transfer leaves `$DDIM_HOME/downloads/NAME.part`, which
  the next attempt resumes; the final name only ever holds a complete, verified, converted model.
- Hugging Face Hub ids of diffusers `UNet2DModel` repositories, `owner/name[@revision]`
  (e.g. `google/ddpm-cifar10-32`), fetched by `huggingface_hub` into its own cache (the optional
  extra `ddim[hub]`; `HF_ENDPOINT`, `HF_HUB_OFFLINE` and `HF_HOME` apply) and read by the
  diffusers importer.

`$DDIM_OFFLINE=1` (or `HF_HUB_OFFLINE=1`) forbids the network: a model that is not cached is
then an error naming the URL and the cache path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ddim.checkpoint import CheckpointError, load_native, save
from ddim.convert import diffusers, official
from ddim.download import DownloadError, fetch
from ddim.models import Model

PESSER_URL = "https://heibox.uni-heidelberg.de/f/{}/?dl=1"  # pesser/pytorch_diffusion ckpt_util.URL_MAP


@dataclass(frozen=True)
class Published:
    """One official checkpoint: where it is published, its MD5, and what it holds."""

    name: str  # our short name
    key: str  # its name in pesser/pytorch_diffusion (URL_MAP, CKPT_MAP, MD5_MAP)
    file_id: str  # the heibox share id in its URL
    path: str  # CKPT_MAP: its relative path, also under a mirror
    md5: str
    dataset: str
    resolution: int
    parameters: int

    @property
    def url(self) -> str:
        mirror = os.environ.get("DDIM_MIRROR")
        return f"{mirror.rstrip('/')}/{self.path}" if mirror else PESSER_URL.format(self.file_id)

    @property
    def ema(self) -> bool:
        return self.key.startswith("ema_")


_CIFAR10, _LSUN = 35_746_307, 113_673_219  # parameters of the two official architectures
# pesser/pytorch_diffusion ckpt_util.py, per model: (its name, training step, dataset, resolution,
# parameters, (heibox id, MD5) of the EMA weights, (heibox id, MD5) of the training weights)
_OFFICIAL = (
    ("cifar10", 790000, "CIFAR-10", 32, _CIFAR10,
     ("2e4f01e2d9ee49bab1d5", "1fa350b952534ae442b1d5235cce5cd3"),
     ("869980b53bf5416c8a28", "82ed3067fd1002f5cf4c339fb80c4669")),
    ("lsun_church", 4432000, "LSUN church", 256, _LSUN,
     ("44ccb50ef3c6436db52e", "fdc68a23938c2397caba4a260bc2445f"),
     ("2711a6f712e34b06b9d8", "eb619b8a5ab95ef80f94ce8a5488dae3")),
    ("lsun_bedroom", 2388000, "LSUN bedroom", 256, _LSUN,
     ("b95206528f384185889b", "1921fa46b66a3665e450e42f36c2720f"),
     ("f179d4f21ebc4d43bbfe", "f70280ac0e08b8e696f42cb8e948ff1c")),
    ("lsun_cat", 1761000, "LSUN cat", 256, _LSUN,
     ("0701aac3aa69457bbe34", "646f23f4821f2459b8bafc57fd824558"),
     ("fac870bd988348eab88e", "bbee0e7c3d7abfb6e2539eaf2fb9987b")),
)  # fmt: skip
PUBLISHED: dict[str, Published] = {
    p.name: p
    for key, step, dataset, resolution, parameters, ema, raw in _OFFICIAL
    for p in (
        Published(f"ddpm-{key.replace('_', '-')}", f"ema_{key}", ema[0],
                  f"ema_diffusion_{key}_model/model-{step}.ckpt", ema[1], dataset, resolution, parameters),
        Published(f"ddpm-{key.replace('_', '-')}-non-ema", key, raw[0],
                  f"diffusion_{key}_model/model-{step}.ckpt", raw[1], dataset, resolution, parameters),
    )
}  # fmt: skip
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_FILE_SUFFIXES = (".safetensors", *official.SUFFIXES)


def home() -> Path:
    """The cache folder: $DDIM_HOME, else ~/.cache/ddim."""
    return Path(os.environ.get("DDIM_HOME") or Path.home() / ".cache" / "ddim").expanduser()


def cached_path(name: str) -> Path:
    """Where the converted model `name` is kept (whether or not it is there)."""
    return home() / "models" / f"{name}.safetensors"


def part_path(name: str) -> Path:
    """Where a stopped download of `name` waits to be resumed."""
    return home() / "downloads" / f"{name}.part"


def offline() -> bool:
    """$DDIM_OFFLINE or $HF_HUB_OFFLINE set to a true value: no network access."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("DDIM_OFFLINE", "HF_HUB_OFFLINE"))  # fmt: skip


def is_hub_id(text: str) -> bool:
    """`owner/name[@revision]`, not ending like a checkpoint file: a Hugging Face Hub model id."""
    return _HUB_ID.match(text) is not None and not text.endswith(_FILE_SUFFIXES)


def resolves(name: str) -> bool:
    """Whether `name` is a published short name or a Hub id, and not a local path (which wins)."""
    return (name in PUBLISHED or is_hub_id(name)) and not Path(name).exists()


def load(name: str, *, progress: bool | None = None, timeout: float | None = None) -> Model:
    """A published model by short name or Hub id; downloaded (once) if it is not cached."""
    if name in PUBLISHED:
        return load_native(download(name, progress=progress, timeout=timeout))
    if is_hub_id(name):
        return load_hub(name)
    raise CheckpointError(
        f"not a published model: {name} (known: {', '.join(PUBLISHED)}, or a Hub id owner/name)"
    )


def download(name: str, *, progress: bool | None = None, timeout: float | None = None) -> Path:
    """The cached native file of the official checkpoint `name`: downloaded, verified against the
    published MD5 and converted if it is not there yet."""
    if name not in PUBLISHED:
        raise CheckpointError(f"unknown model name {name!r}; known: {', '.join(PUBLISHED)}")
    target, pub = cached_path(name), PUBLISHED[name]
    if target.is_file():
        return target
    if offline():
        raise DownloadError(
            f"{name} is not cached at {target} and the network is off (DDIM_OFFLINE/HF_HUB_OFFLINE): "
            f"unset it, or download {pub.url} on a connected machine with `ddim download {name}` "
            f"and copy {target} here"
        )
    part = part_path(name)
    try:
        fetch(pub.url, part, pub.md5, timeout=timeout, progress=progress)
    except DownloadError as e:
        raise DownloadError(f"{e} [{name} would be cached at {target}]") from None
    model = official.load_file(part, resolution=pub.resolution)
    info = {**model.info, "imported_from": pub.url, "name": name, "official_name": pub.key, "md5": pub.md5}
    save(Model(model.net, model.schedule, model.image_shape, model.prediction, info), target)
    part.unlink()
    return target


def load_hub(hub_id: str) -> Model:
    """A diffusers UNet2DModel (or pipeline) repository `owner/name[@revision]` of the Hugging
    Face Hub, through huggingface_hub's cache."""
    repo_id, _, revision = hub_id.partition("@")
    folder = _snapshot(repo_id, revision or None, ["*.json", "*diffusion_pytorch_model.safetensors"])
    if not any(Path(folder).rglob(diffusers.WEIGHTS[0])):  # an older repository: PyTorch .bin weights
        folder = _snapshot(repo_id, revision or None, ["*.json", "*diffusion_pytorch_model.bin"])
    model = diffusers.load_folder(folder)
    return Model(model.net, model.schedule, model.image_shape, model.prediction,
                 {**model.info, "imported_from": f"hf://{hub_id}", "snapshot": folder})  # fmt: skip


def _snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> str:
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise CheckpointError(
            f"{repo_id} looks like a Hugging Face Hub id, which needs huggingface_hub: "
            "pip install 'ddim[hub]'"
        ) from None
    endpoint = os.environ.get("HF_ENDPOINT")  # read now, not when huggingface_hub was imported
    where = f"{endpoint or constants.ENDPOINT}/{repo_id}"
    try:
        return snapshot_download(
            repo_id, revision=revision, allow_patterns=patterns, local_files_only=offline(), endpoint=endpoint
        )
    except RevisionNotFoundError:
        raise CheckpointError(f"{where} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"no such file, and no model {repo_id} on the Hub ({where}; private or gated repositories "
            "need `hf auth login`)"
        ) from None
    except LocalEntryNotFoundError:
        cache = constants.HF_HUB_CACHE
        why = "the network is off (HF_HUB_OFFLINE/DDIM_OFFLINE)" if offline() else "cannot reach the Hub"
        raise DownloadError(
            f"no such file or folder, and the Hub model {repo_id}@{revision or 'main'} is not in the Hub "
            f"cache {cache} and {why} ({where})"
        ) from None
    except (OSError, ValueError) as e:  # HTTP errors, a bad repo id, a full disk, ...
        raise DownloadError(f"{where}: {str(e).strip().splitlines()[0]}") from None


def cached() -> list[tuple[str, Path, int]]:
    """(name, file, bytes) of every converted official model in the cache."""
    return [(n, cached_path(n), cached_path(n).stat().st_size) for n in PUBLISHED if cached_path(n).is_file()]
