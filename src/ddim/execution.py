"""How the sampler runs the network: channels-last memory and torch.compile.

Neither changes what is computed, only how (the precision, `sampling.Precision`, is the other
execution option; it does change the arithmetic). Channels-last stores a batch of images as
(N, H, W, C) in memory, the layout that CPU (oneDNN) and GPU (cuDNN) convolutions prefer.
torch.compile traces the network once and replaces its operations by generated, fused kernels.
Results differ from eager float32 by rounding only; benchmarks/sampling.py measures what each buys.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

Net = Callable[[Tensor, Tensor], Tensor]


class CompileError(RuntimeError):
    """torch.compile could not compile the network (no C++ compiler, an unsupported platform, …)."""


def prepare(net: Net, *, channels_last: bool = False, compile: bool = False) -> Net:
    """`net` as the sampling loop calls it, net(x_t (B, C, H, W), t (B,)[, labels (B,)]) → (B, C, H, W).

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
    return _checked(_compiled(net) if compile else net, _name(net))


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
    def call(x: Tensor, t: Tensor, *labels: Tensor) -> Tensor:
        return net(x.contiguous(memory_format=torch.channels_last), t, *labels)

    return call


def _compiled(net: Net) -> Net:
    """torch.compile(net); a failure to compile, at once or at the first call, is a `CompileError`."""
    try:
        compiled = torch.compile(net, dynamic=False)
    except RuntimeError as e:  # e.g. a Python version Dynamo does not support yet
        raise CompileError(f"torch.compile is not available here: {_one_line(e)}") from e

    def call(x: Tensor, t: Tensor, *labels: Tensor) -> Tensor:
        try:
            return compiled(x, t, *labels)
        except torch._dynamo.exc.TorchDynamoException as e:  # e.g. BackendCompilerFailed
            raise CompileError(f"torch.compile failed: {_one_line(e)}; run without compiling") from e

    return call


def _one_line(e: BaseException) -> str:
    """The cause of a (possibly wrapped, many-line) compiler error, in one line."""
    inner = getattr(e, "inner_exception", None) or e
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    text = f"{type(inner).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 300 else text[:297] + "..."
