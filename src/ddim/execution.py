"""How the sampler runs the network: `Execution` (device, precision, channels-last, compile,
batch size), applied to the network in one place, `Execution.prepare`.

Precision (bf16/fp16 autocast, the weights staying fp32) changes the arithmetic; channels-last
and compile change only how it runs. Channels-last stores a batch of images as
(N, H, W, C) in memory, the layout that CPU (oneDNN) and GPU (cuDNN) convolutions prefer.
torch.compile traces the network once and replaces its operations by generated, fused kernels.
The feature extractors (`ddim.metrics`) take the same
options. Results differ from eager float32 by rounding only; benchmarks/sampling.py and
benchmarks/inception.py measure what each buys.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

Net = Callable[..., Tensor]  # net(x (B, C, H, W), *conditioning) → Tensor
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class CompileError(RuntimeError):
    """torch.compile could not compile the network (no C++ compiler, an unsupported platform, …)."""


@dataclass(frozen=True)
class Execution:
    """How the network runs; none of it changes which samples are drawn (precision changes
    their rounding). device None: where a model's parameters are (a plain callable: where its
    noise is, else the CPU). batch_size None: all samples in one batch."""

    device: str | torch.device | None = None
    precision: Precision = "fp32"
    channels_last: bool = False
    compile: bool = False
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.batch_size is not None and (
            not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1
        ):
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    def prepare(self, net: Net) -> Net:
        """`net` in channels-last memory and compiled, as asked (`prepare`), its output checked
        to be a tensor of its input's shape."""
        return _checked(prepare(net, channels_last=self.channels_last, compile=self.compile), _name(net))

    def in_precision(self, net: Net, device: torch.device) -> Net:
        """`net` (any wrapper of the network: guidance, thresholding) called under autocast to
        the precision on `device`; fp32 returns it as it is."""
        if self.precision == "fp32":
            return net

        def call(x: Tensor, t: Tensor) -> Tensor:
            with autocast(device, self.precision):
                return net(x, t)

        return call

    def view(self) -> dict:
        """What `--dry-run` prints: every field, the device as text."""
        return {
            "device": None if self.device is None else str(self.device), "precision": self.precision,
            "channels_last": self.channels_last, "compile": self.compile, "batch_size": self.batch_size,
        }  # fmt: skip


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """The context a network call runs in at `precision`: bf16/fp16 autocast (weights stay fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


def prepare(net: Net, *, channels_last: bool = False, compile: bool = False) -> Net:
    """`net` as its caller runs it: net(x (B, C, H, W), *rest), e.g. the sampling loop's
    net(x_t, t (B,)[, labels (B,)]) → (B, C, H, W) or a feature extractor's net(x) → (B, D).

    channels_last: convert an nn.Module's 4-D weights to channels-last memory, in place (their
    values do not change), and every input x_t on the way in. compile: torch.compile with static
    shapes. Dynamo keeps the compiled code for the process and reuses it whenever the same network
    is called with the same input shapes, so a run compiles once per batch size (a last, smaller
    batch compiles once more) however often `sample` is called.
    """
    if channels_last:
        if isinstance(net, nn.Module):
            net.to(memory_format=torch.channels_last)
        net = _channels_last_inputs(net)
    return _compiled(net) if compile else net


def _checked(net: Net, name: str) -> Net:
    """`net`, whose output must be a tensor of its input's shape: anything else (None, a wrong
    shape, a tuple) is a ValueError naming the model, not an error deep in the sampler."""

    def call(x: Tensor, t: Tensor, *labels: Tensor) -> Tensor:
        out = net(x, t, *labels)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the model {name} returned {got} for an input of shape {tuple(x.shape)}: it must "
                "return a tensor of its input's shape"
            )
        return out

    return call


def _name(net: Net) -> str:
    return getattr(net, "__qualname__", None) or type(net).__name__


def _channels_last_inputs(net: Net) -> Net:
    def call(x: Tensor, *rest: Tensor) -> Tensor:
        return net(x.contiguous(memory_format=torch.channels_last), *rest)

    return call


def _compiled(net: Net) -> Net:
    """torch.compile(net); a failure to compile, at once or at the first call, is a `CompileError`."""
    try:
        compiled = torch.compile(net, dynamic=False)
    except RuntimeError as e:  # e.g. a Python version Dynamo does not support yet
        raise CompileError(f"torch.compile is not available here: {_one_line(e)}") from e

    def call(x: Tensor, *rest: Tensor) -> Tensor:
        try:
            return compiled(x, *rest)
        except torch._dynamo.exc.TorchDynamoException as e:  # e.g. BackendCompilerFailed
            raise CompileError(f"torch.compile failed: {_one_line(e)}; run without compiling") from e

    return call


def _one_line(e: BaseException) -> str:
    """The cause of a (possibly wrapped, many-line) compiler error, in one line."""
    inner = getattr(e, "inner_exception", None) or e
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    text = f"{type(inner).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 300 else text[:297] + "..."
