"""`ddim download`: fetch a published model into the cache (what `--model NAME` would do)."""

from __future__ import annotations

import argparse

from ddim import hub
from ddim.download import DEFAULT_TIMEOUT

DOWNLOAD_EXAMPLES = f"""examples:
  ddim download ddpm-cifar10                 the official DDPM CIFAR-10 model (EMA weights)
  ddim download ddpm-lsun-church-non-ema     the training weights instead of the EMA ones
  ddim download google/ddpm-cifar10-32       a diffusers model on the Hugging Face Hub (ddim[hub])
  ddim download google/ddpm-cifar10-32@main  ... at a revision: a branch, tag or commit
  ddim models                                what is known and what is cached

environment: DDIM_HOME (cache, default ~/.cache/ddim), DDIM_MIRROR (base URL holding the official
files' paths), DDIM_DOWNLOAD_TIMEOUT (seconds, default {DEFAULT_TIMEOUT:g}), DDIM_OFFLINE / HF_HUB_OFFLINE.
"""


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="download a published model (ddim models lists them) into the cache",
        description="Download a published model, check its published MD5 and convert it once to the "
        "native format in the cache ($DDIM_HOME/models). A stopped download resumes where it stopped.",
        epilog=DOWNLOAD_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="a short name (ddim models) or a Hugging Face Hub id owner/name[@revision]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name in hub.PUBLISHED or not hub.is_hub_id(args.name):
        print(f"cached: {hub.download(args.name, progress=False if args.quiet else None)}")
    else:
        model = hub.load_hub(args.name)
        print(f"cached: {model.info['snapshot']} ({model.num_parameters:,} parameters)")
    return 0
