"""How a network runs: its precision (autocast), channels-last memory and torch.compile.

The sampler and the feature extractors (`ddim.metrics`) take the same three options. The
precision changes the arithmetic; channels-last and compile change only how the same thing is
computed. Channels-last stores a batch of images as (N, H, W, C) in memory, the layout that CPU
(oneDNN) and GPU (cuDNN) convolutions prefer. torch.compile traces the network once and
replaces its operations by generated, fused kernels. Results differ from eager float32 by
rounding only; benchmarks/sampling.py and benchmarks/inception.py measure what each buys.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor, nn

Net = Callable[..., Tensor]  # net(x (B, C, H, W), *conditioning) → Tensor
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class CompileError(RuntimeError):
    """torch.compile could not compile the network (no C++ compiler, an unsupported platform, …)."""


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
