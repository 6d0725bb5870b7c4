"""The small MNIST classifier whose penultimate layer gives the `mnist` features.

Three 3×3 conv blocks (16, 32, 64 channels, each conv → BN → ReLU → 2×2 max-pool) take a
1×28×28 image to 64×3×3; a 576 → 128 linear layer gives the features and a 128 → 10 layer
the logits. The features are taken before the hidden ReLU: dense, full-rank 128-d vectors
(ReLU outputs would be half zeros and can make the covariance singular).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

FEATURE_DIM = 128
NUM_CLASSES = 10


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)
    )


class MnistNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(_block(1, 16), _block(16, 32), _block(32, 64), nn.Flatten())
        self.hidden = nn.Linear(64 * 3 * 3, FEATURE_DIM)  # 28 → 14 → 7 → 3 (floor)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(FEATURE_DIM, NUM_CLASSES))

    def features(self, x: Tensor) -> Tensor:
        """(N, 1, 28, 28) in [-1, 1] → (N, 128), the pre-activation penultimate layer."""
        return self.hidden(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, 28, 28) in [-1, 1] → (N, 10) logits."""
        return self.head(self.features(x))


@torch.no_grad()
def accuracy(net: MnistNet, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Fraction of images (N, 1, 28, 28) in [-1, 1] whose predicted digit equals the label y (N,)."""
    net.eval()
    correct = sum(
        int((net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        for i in range(0, len(x), batch_size)
    )
    return correct / len(x)
