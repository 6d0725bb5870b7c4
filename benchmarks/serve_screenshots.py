"""Regenerate the screenshots of docs/serve.md and print the sentence that describes them.

    python -m benchmarks.serve_screenshots --model mnist --image ../shared/data/mnist.npz --out docs/images

`ddim serve`'s app runs on 127.0.0.1 and Debian's headless Chromium uses its page as a person
would (`benchmarks.browser`, as tests/serve/test_e2e.py does): Sample (--n images, --steps,
--seed; --class and --guidance for a class-conditional model), Interpolate (--seed-a, --seed-b,
--frames, the slider moved to --frame) and Invert (--image: an image file, or image --index of a
dataset's x_test; by default image 0 of the Sample grid at η = 0). Then a full-page screenshot,
serve.png, and a phone-width one after Sample alone, serve-phone.png. The times and the MSE it
prints are the ones the page shows: wall times on this machine, measured and not asserted.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import ddim
from benchmarks.browser import DESKTOP, PHONE, chromium, live_server, open_page
from ddim.cli._args import device_arg, guidance_arg, int_at_least
from ddim.data import load_images, to_model_range
from ddim.guidance import conditioning
from ddim.serve import Limits, create_app
from ddim.serve.images import png_bytes

if TYPE_CHECKING:
    from playwright.sync_api import Page

TIMEOUT_MS = 30 * 60 * 1000  # a big model on a busy CPU: let it finish


def press(page: Page, section: str, **fields: object) -> str:
    """Fill `section`'s form fields, press its button, wait until it is done; its status line."""
    form = page.locator(f"#{section}-form")
    for name, value in fields.items():
        field = form.locator(f"[name={name}]")
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(str(value))
        else:
            field.fill(str(value))
    page.click(f"#{section}-button")
    page.wait_for_selector(f"#{section}[data-state=done], #{section}[data-state=error]", timeout=TIMEOUT_MS)
    status = page.inner_text(f"#{section}-status")
    if page.get_attribute(f"#{section}", "data-state") == "error":
        raise RuntimeError(f"{section}: {status}")
    return status


def class_fields(labels: torch.Tensor | None, w: float) -> dict[str, object]:
    """The form fields of a class and its guidance (the class first: choosing it enables guidance)."""
    return {} if labels is None else {"classes": int(labels[0]), "guidance": w}


def image_to_invert(model: ddim.Model, args: argparse.Namespace) -> tuple[bytes, str]:
    """The PNG to upload to Invert, and how the document names it."""
    if args.image is None:
        x = ddim.sample(
            model, 1, steps=args.steps, seed=args.seed, classes=args.classes, guidance=args.guidance
        )
        return png_bytes(x), f"image 0 of the grid (seed {args.seed}, η = 0)"
    x = load_images(args.image, key="x_test", limit=args.index + 1)[args.index :]  # (1, C, H, W) uint8
    if len(x) == 0:
        raise SystemExit(f"--image {args.image} has no image {args.index} (images count from 0)")
    name = args.image.name if args.image.suffix != ".npz" else f"{args.image.name}'s x_test"
    return png_bytes(to_model_range(x)), f"image {args.index} of {name}"


def where(device: torch.device) -> str:
    return f"the {os.cpu_count()}-core CPU" if device.type == "cpu" else torch.cuda.get_device_name(device)


def class_name(model: ddim.Model, k: int) -> str:
    return model.class_names[k] if model.class_names else str(k)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mnist", help="built-in name or checkpoint path (default: mnist)")
    p.add_argument("--device", type=device_arg, default="auto", help="cpu, cuda, … (default: auto)")
    p.add_argument("--out", type=Path, default=Path("docs/images"), help="folder (default: docs/images)")
    p.add_argument("--n", type=int_at_least(1), default=16, help="images sampled (default: 16)")
    p.add_argument("--steps", type=int_at_least(1), default=50, help="sampling steps S (default: 50)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="the grid's seed (default: 0)")
    p.add_argument("--class", dest="classes", default=None, help="a class-conditional model's class")
    p.add_argument("--guidance", type=guidance_arg, default=None, help="its guidance w (default: 1)")
    p.add_argument("--seed-a", type=int_at_least(0), default=0, help="interpolation: one end (default: 0)")
    p.add_argument("--seed-b", type=int_at_least(0), default=1, help="the other end (default: 1)")
    p.add_argument("--frames", type=int_at_least(2), default=9, help="frames (default: 9)")
    p.add_argument("--frame", type=int_at_least(1), default=6, help="the frame shown, from 1 (default: 6)")
    p.add_argument(
        "--latent-steps", type=int_at_least(1), default=20, help="S of Interpolate and Invert (default: 20)"
    )
    p.add_argument("--image", type=Path, default=None, help="the image to invert: a file, .npz or folder")
    p.add_argument("--index", type=int_at_least(0), default=0, help="its image of a dataset (default: 0)")
    args = p.parse_args(argv)
    if args.frame > args.frames:
        p.error(f"--frame {args.frame} is past the last of the {args.frames} frames")
    return args


def use_the_page(url: str, args: argparse.Namespace, classes: dict, upload: bytes) -> dict[str, str]:
    """Drive the page at `url` (Sample and Interpolate with the form fields `classes`, Invert
    `upload`) and take both screenshots; the status line of each section, and the MSE shown."""
    shown = {}
    sample = {**classes, "steps": args.steps, "n": args.n, "seed": args.seed}
    latents = {**classes, "seed_a": args.seed_a, "seed_b": args.seed_b, "frames": args.frames}
    with chromium() as browser:
        page = open_page(browser, url, DESKTOP)
        shown["sample"] = press(page, "sample", **sample)
        shown["interpolate"] = press(page, "interpolate", **latents, steps=args.latent_steps)
        page.focus("#frame-slider")
        for _ in range(args.frame - 1):
            page.keyboard.press("ArrowRight")
        file = {"name": "image.png", "mimeType": "image/png", "buffer": upload}
        page.set_input_files("#invert-form [name=image]", file)
        shown["invert"] = press(page, "invert", steps=args.latent_steps)
        shown["mse"] = page.inner_text("#invert-mse")
        page.screenshot(path=args.out / "serve.png", full_page=True)
        phone = open_page(browser, url, PHONE)
        shown["phone"] = press(phone, "sample", **sample)
        phone.screenshot(path=args.out / "serve-phone.png", full_page=True)
    return shown


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model = ddim.load(args.model, device=args.device)
    try:
        labels, w = conditioning(model, args.classes, args.guidance, 1)  # before the browser starts
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    upload, inverted = image_to_invert(model, args)
    args.out.mkdir(parents=True, exist_ok=True)
    with live_server(create_app(model, Limits(), name=args.model)) as url:
        shown = use_the_page(url, args, class_fields(labels, w), upload)
    for section in ("sample", "interpolate", "invert", "phone"):
        print(f"{section}: {shown[section]}")
    print(f"wrote {args.out / 'serve.png'} and {args.out / 'serve-phone.png'}\n")
    guided = None if labels is None else (class_name(model, int(labels[0])), w)
    print(sentence(args, shown, inverted, guided))


def sentence(args: argparse.Namespace, shown: dict[str, str], inverted: str, guided: tuple | None) -> str:
    """docs/serve.md's description of the screenshots, with the time and the MSE the page showed."""
    seconds = float(re.search(r" in ([\d.]+) s ", shown["sample"]).group(1))
    of_class, as_class = ("", "")
    if guided is not None:
        of_class, as_class = f" of class {guided[0]} (w = {guided[1]:g})", f", decoded as class {guided[0]}"
    return (
        f"The screenshot shows the model {Path(args.model).name}: {args.n} samples{of_class} with "
        f"{args.steps} steps ({seconds:.1f} s on {where(args.device)}), frame {args.frame} of "
        f"{args.frames} between the latents of seeds {args.seed_a} and {args.seed_b}{as_class}, and "
        f"{inverted} inverted and reconstructed with {args.latent_steps} steps each way (per-pixel MSE "
        f"{float(shown['mse']):.2g})."
    )


if __name__ == "__main__":
    main()
