"""`ddim info`: describe a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddim import hub
from ddim.checkpoint import read_metadata
from ddim.cli._args import DEFAULT_MODEL
from ddim.convert import FORMATS, detect
from ddim.loading import builtin_names, load

INFO_EXAMPLES = """examples:
  ddim info                          the shipped default model
  ddim info mnist-cond --json        a built-in, as JSON
  ddim info runs/mnist/model.safetensors   a checkpoint of `ddim train`
  ddim info runs/d/students/4-step.safetensors   a student of `ddim distill`: its timesteps
  ddim info ddpm-cifar10-32/         a diffusers folder or DDPM checkpoint (what `ddim convert` reads)
"""


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="describe a model: network, parameters, schedule, provenance",
        description="Describe a built-in model or checkpoint.",
        epilog=INFO_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model", nargs="?", default=DEFAULT_MODEL, help=f"built-in name or path (default: {DEFAULT_MODEL})"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load(args.model)
    path = Path(args.model)
    if hub.resolves(args.model):  # a published model: describe its cached copy
        path = hub.cached_path(args.model) if args.model in hub.PUBLISHED else Path(model.info["snapshot"])
    fmt = None if args.model in builtin_names() else detect(path)
    files = [path] if fmt is None or path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    report = {
        "model": str(args.model),
        "source": "built-in" if fmt is None else f"{sum(p.stat().st_size for p in files):,} bytes",
        "format": "built-in" if fmt is None else FORMATS[fmt],
        "format_version": read_metadata(path)["format_version"] if fmt == "ddim" else None,
        "net": model.net.config.to_dict(),
        "parameters": model.num_parameters,
        "image_shape": list(model.image_shape),
        "prediction": model.prediction,
        "classes": None if model.num_classes is None else list(model.class_names) or model.num_classes,
        "schedule": model.schedule.describe(),
        "distilled_timesteps": None if model.default_timesteps is None else list(model.default_timesteps),
        "info": model.info,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            if value is not None:
                print(f"{key + ':':16}{json.dumps(value) if isinstance(value, dict | list) else value}")
    return 0
