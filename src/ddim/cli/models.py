"""`ddim models`: the published models ddim knows by name, and which of them are cached."""

from __future__ import annotations

import argparse

from ddim import hub
from ddim.loading import builtin_names

MODELS_EXAMPLES = """examples:
  ddim models                                  known names; cached files and their sizes
  DDIM_HOME=/data/ddim ddim models             another cache folder
  ddim download ddpm-cifar10                   fetch one now (--model NAME fetches on first use)
"""


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the built-in and published models, and what is cached",
        description="List the built-in models, the published models known by name (downloaded on "
        "first use, or with ddim download) and the cache they are kept in ($DDIM_HOME).",
        epilog=MODELS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(f"built-in: {', '.join(builtin_names())}")
    print(f"published (cache: {hub.home() / 'models'}):")
    cached = {name: (path, size) for name, path, size in hub.cached()}
    width = max(map(len, hub.PUBLISHED))
    for name, pub in hub.PUBLISHED.items():
        what = f"{pub.dataset} {pub.resolution}x{pub.resolution}, {'EMA' if pub.ema else 'non-EMA'}"
        if name in cached:
            path, size = cached[name]
            state = f"cached {path} ({size:,} bytes)"
        else:
            state = f"not cached (download about {pub.parameters * 4 / 1e6:.0f} MB)"
        print(f"{name:<{width}}  {what:<30}  {state}")
    print("also: any Hugging Face Hub id of a diffusers UNet2DModel, e.g. google/ddpm-cifar10-32 "
          "(pip install 'ddim[hub]'; kept in the Hub's own cache)")  # fmt: skip
    return 0
