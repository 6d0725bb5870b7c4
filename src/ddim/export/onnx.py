"""A model's network as an ONNX file, for ONNX Runtime and other inference engines.

Inputs `x_t` (B, C, H, W) float32 and `t` (B,) int64 training timesteps (and `y` (B,) int64
classes, the null class being num_classes, for a class-conditional net); output `eps`, `x0` or
`v` (the model's prediction type), shaped like x_t. B is dynamic. The exporter is torch.export's
(`torch.onnx.export(..., dynamo=True)`); scaled-dot-product attention is decomposed into
matmul/softmax first, as ONNX's attention operator takes 4-D inputs and ours are 3-D. The
metadata key `ddim` holds JSON: prediction, image shape, net config, class names and the β
(float64), which is all a sampler needs besides the network.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ddim.export.base import ExportError, require_unet
from ddim.io import atomic_write
from ddim.models import Model

OPSET = 18


def metadata(model: Model) -> dict:
    return {
        "format": "ddim-onnx", "prediction": model.prediction, "image_shape": list(model.image_shape),
        "net": model.net.config.to_dict(), "class_names": list(model.class_names),
        "betas": model.schedule.betas.tolist(),
    }  # fmt: skip


def input_names(model: Model) -> list[str]:
    return ["x_t", "t"] + (["y"] if model.num_classes is not None else [])


def to_onnx(model: Model, out: str | os.PathLike) -> Path:
    """Write the network of `model` to the ONNX file `out` (atomically)."""
    require_unet(model, "ONNX")
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs onnx and onnxscript: pip install 'ddim[onnx]'") from None
    net = model.net.eval()
    device = next(net.parameters()).device
    example = (
        torch.randn(2, *model.image_shape, device=device),
        torch.tensor([0, model.schedule.num_timesteps - 1], device=device),
        *([torch.tensor([0, model.num_classes], device=device)] if model.num_classes is not None else []),
    )
    batch = torch.export.Dim("batch", min=1)
    with _quiet(), torch.no_grad():
        program = torch.export.export(net, example, dynamic_shapes=tuple({0: batch} for _ in example))
        program = program.run_decompositions()  # SDPA → matmul/softmax (see the module docstring)
        onnx_program = torch.onnx.export(
            program, dynamo=True, input_names=input_names(model), output_names=[model.prediction],
            opset_version=OPSET, verbose=False, optimize=True,
        )  # fmt: skip
    proto = onnx_program.model_proto
    onnx.helper.set_model_props(proto, {"ddim": json.dumps(metadata(model))})
    data = proto.SerializeToString()
    return atomic_write(out, lambda f: f.write(data))


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's log lines and warnings (torchvision absent, deprecations inside
    torch.export): none of them concerns the user."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
