"""Retrain the `mnist` feature classifier and write its weights (a few minutes on one CPU thread).

    OMP_NUM_THREADS=1 python -m benchmarks.train_mnist --data mnist.npz --out mnist-classifier.safetensors

(the shipped file is src/ddim/metrics/weights/mnist-classifier.safetensors: 99.46 % test accuracy,
111 s). Adam with a one-cycle learning rate, light random shifts (±2 px) as augmentation; the
test accuracy is printed and stored in the file's metadata.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor

from ddim.data import load_images, to_model_range
from ddim.io import atomic_write
from ddim.metrics.mnist_net import MnistNet, accuracy


def _labels(path: Path, key: str) -> Tensor:
    with np.load(path, allow_pickle=False) as data:
        return torch.from_numpy(data[key].astype(np.int64))


def _shift(x: Tensor, generator: torch.Generator, max_shift: int = 2) -> Tensor:
    """Translate each image (B, 1, 28, 28) by a random integer offset in [-max_shift, max_shift]²."""
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, len(x)), generator=generator).tolist()
    h, w = x.shape[-2:]
    return torch.stack([p[:, a : a + h, b : b + w] for p, a, b in zip(padded, dy, dx, strict=True)])


def train(data: Path, epochs: int, batch_size: int, lr: float, seed: int) -> tuple[MnistNet, float]:
    """Train on x_train/y_train; return the net and its accuracy on x_test/y_test."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x = to_model_range(load_images(data, key="x_train"))  # (60000, 1, 28, 28)
    y = _labels(data, "y_train")
    net = MnistNet()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = len(x) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x), generator=generator)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            loss = F.cross_entropy(net(_shift(x[idx], generator)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.4f}", flush=True)
    test_acc = accuracy(net, to_model_range(load_images(data, key="x_test")), _labels(data, "y_test"))
    return net.eval(), test_acc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="MNIST .npz: x_train, y_train, x_test, y_test")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    net, test_acc = train(args.data, args.epochs, args.batch_size, args.lr, args.seed)
    seconds = time.perf_counter() - start
    meta = {"test_accuracy": f"{test_acc:.4f}", "train": json.dumps({
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "seconds": round(seconds), "threads": torch.get_num_threads(), "torch": torch.__version__,
    })}  # fmt: skip
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    atomic_write(args.out, lambda f: f.write(safetensors.torch.save(state, metadata=meta)))
    print(f"test accuracy {test_acc:.4f} ({seconds:.0f} s); wrote {args.out}")


if __name__ == "__main__":
    main()
