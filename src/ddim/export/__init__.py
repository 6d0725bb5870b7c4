"""Our models out to other tools: diffusers pipeline folders and ONNX files.

- `to_diffusers(model, out)`: a DDPMPipeline folder (`model_index.json`, `unet/` a UNet2DModel,
  `scheduler/` a DDPMScheduler config holding the exact β). diffusers' DDPMPipeline and
  DDIMPipeline load it and give the images `ddim.sample` gives for the same x_T (and step noise).
- `to_onnx(model, out)`: the network alone (x_t, t[, y]) → prediction, with a dynamic batch; the
  schedule, prediction type and image shape ride along as metadata (`ddim` in metadata_props).

Both refuse a model the target cannot express in one line naming what is missing, and write
atomically: a failure leaves no output and any earlier one as it was.
"""

from __future__ import annotations

from typing import Literal

from ddim.export.diffusers import to_diffusers
from ddim.export.onnx import to_onnx

Format = Literal["diffusers", "onnx"]
FORMATS: dict[str, str] = {
    "diffusers": "a diffusers DDPMPipeline folder (UNet2DModel + DDPMScheduler config)",
    "onnx": "an ONNX file of the network (dynamic batch), schedule in its metadata",
}
__all__ = ["FORMATS", "Format", "to_diffusers", "to_onnx"]
