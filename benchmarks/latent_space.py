"""Regenerate the numbers and pictures of docs/latent-space.md with the `ddim` commands it shows.

    python -m benchmarks.latent_space                       # the shipped model, `ddim.load("mnist")`
    python -m benchmarks.latent_space --model runs/mnist/checkpoints/step-00002000.safetensors

Each figure of the document is one `ddim` command, run here in-process exactly as printed in the
document; its tables are filled in between `<!-- latent-space:NAME -->` markers, so the prose
around them stays hand-written. Timings are wall times on this machine (they are measured,
not asserted). Cost: about 360 network evaluations per image for Table 2, 2 × 1180 per latent
for the consistency figures.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import time
from pathlib import Path

import torch

from ddim.cli import main as ddim_main
from ddim.io import atomic_write
from ddim.loading import builtin_names, load

DOC = Path("docs/latent-space.md")
IMAGES = Path("docs/images")
RESULTS = Path("docs/results")
SECTIONS = ("table2", "seeds", "images", "consistency")


def commands(model: str, data: str, limit: int, n: int, batch_size: int) -> dict[str, list[str]]:
    """The document's commands, by the name of the section they fill."""
    common = ["--model", model, "--batch-size", str(batch_size), "--quiet"]
    return {
        "table2": ["reconstruct", "--images", data, "--key", "x_test", "--limit", str(limit),
                   "--steps", "10,20,50,100", "--out", f"{IMAGES}/mnist-reconstruction.png", "--show", "10",
                   "--json", f"{RESULTS}/reconstruction.json", *common],
        "seeds": ["interpolate", "--seeds", "1,2", "--num", "11", "--steps", "50",
                  "--out", f"{IMAGES}/mnist-interpolation-seeds.png",
                  "--gif", f"{IMAGES}/mnist-interpolation-seeds.gif", *common],
        "images": ["interpolate", "--images", data, "--key", "x_test", "--indices", "0,1", "--num", "11",
                   "--steps", "50", "--out", f"{IMAGES}/mnist-interpolation-images.png", *common],
        "consistency": ["consistency", "--n", str(n), "--steps", "10,20,50,100", "--reference", "1000",
                        "--out", f"{IMAGES}/mnist-consistency.png",
                        "--json", f"{RESULTS}/consistency.json", *common],
    }  # fmt: skip


def run(name: str, argv: list[str]) -> float:
    """Run one command as `ddim ARGV`; return its wall time in seconds."""
    print(f"[{name}] ddim {shlex.join(argv)}", flush=True)
    start = time.perf_counter()
    code = ddim_main(argv)
    if code != 0:
        raise SystemExit(f"[{name}] failed with exit code {code}")
    return time.perf_counter() - start


def table2_markdown(report: dict) -> str:
    lines = [
        "| S | network evaluations (invert + decode) | MSE, this model (± s.e.) | MSE, paper (CIFAR-10) |",
        "|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        paper = "—" if r["paper_cifar10"] is None else f"{r['paper_cifar10']}"
        lines.append(f"| {r['steps']} | {r['evaluations']} | {r['mse']:.4f} (± {r['sem']:.4f}) | {paper} |")
    return "\n".join(lines)


def consistency_markdown(report: dict) -> str:
    steps = sorted({r["steps"] for r in report["rows"]})
    etas = sorted({r["eta"] for r in report["rows"]})
    value = {(r["eta"], r["steps"]): r for r in report["rows"]}
    lines = ["| η | " + " | ".join(f"S = {s}" for s in steps) + " |", "|---|" + "---:|" * len(steps)]
    for eta in etas:
        cells = [f"{value[eta, s]['distance']:.3f} (± {value[eta, s]['sem']:.3f})" for s in steps]
        lines.append(f"| {eta:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fill(doc: str, name: str, body: str) -> str:
    """Replace the text between `<!-- latent-space:NAME -->` and `<!-- /latent-space:NAME -->`."""
    pattern = re.compile(rf"(<!-- latent-space:{name} -->\n).*?(<!-- /latent-space:{name} -->)", re.DOTALL)
    if not pattern.search(doc):
        raise SystemExit(f"{DOC} has no latent-space:{name} markers")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), doc)


def describe(model_name: str) -> str:
    info = load(model_name).info
    step = info.get("step") or info.get("training", {}).get("steps")
    text = f"`{model_name}`" + (f" (training step {step})" if step is not None else "")
    if model_name not in builtin_names():
        text += " — a checkpoint file, not the shipped model: regenerate with `--model mnist`"
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mnist", help="built-in name or checkpoint path (default: mnist)")
    p.add_argument("--data", default="../shared/data/mnist.npz", help="MNIST npz with x_test")
    p.add_argument("--limit", type=int, default=500, help="test images for Table 2 (default: 500)")
    p.add_argument("--n", type=int, default=16, help="latents for the consistency figures (default: 16)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--only", nargs="*", choices=SECTIONS, default=None, help="run only these sections")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cmds = commands(args.model, args.data, args.limit, args.n, args.batch_size)
    times, fills = {}, {}
    for name, cmd in cmds.items():
        if args.only is None or name in args.only:
            times[name] = run(name, cmd)
            fills[f"{name}-command"] = f"```bash\nddim {shlex.join(cmd)}\n```\n({times[name]:.0f} s)"
    if "table2" in times:
        fills["table2"] = table2_markdown(json.loads((RESULTS / "reconstruction.json").read_text()))
    if "consistency" in times:
        fills["consistency"] = consistency_markdown(json.loads((RESULTS / "consistency.json").read_text()))
    fills["model"] = f"Model: {describe(args.model)}; CPU, {torch.get_num_threads()} thread(s)."
    doc = DOC.read_text()  # read last: the prose may be edited while the commands run
    for name, body in fills.items():
        doc = fill(doc, name, body)
    atomic_write(DOC, lambda f: f.write(doc.encode()))
    print(f"updated {DOC}: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))


if __name__ == "__main__":
    main()
