"""Sampling speed against the machine's limit, in one run: network, sampler, memory, diffusers.

    python -m benchmarks.sampling --out bench/                  # the full run (about an hour on 2 cores)
    python -m benchmarks.sampling --quick --models tiny --variants fp32,bf16 --diffusers-config small

Every timing is a median over repeats in which the variants alternate (the order reversed every
other repeat): a shared machine drifts, so speed-ups are the medians of ratios taken within a
repeat. Each variant first runs once untimed (warm-up; torch.compile compiles then).

- Matmul peak: the best n×n matmul rate in fp32 and bf16, measured here; the yardstick.
- Per model and variant (a variant is execution options joined by "+": fp32 | bf16 | fp16,
  channels_last, compile): network ms/image at batch B, achieved GFLOP/s (FLOPs counted by
  torch.utils.flop_counter) and its fraction of the peak of its precision; for each S, images/s
  of `ddim.sample` (DDIM η = 0, S steps), the sampler overhead time(S-step sample) /
  (S × time(one evaluation)) and the samples' error against eager fp32 from the same x_T; peak
  memory of an S-step sample (peak RSS on the CPU, torch.cuda.max_memory_allocated on a GPU).
- diffusers (benchmarks/vs_diffusers.py): the same imported weights, x_T and steps through
  diffusers' DDIM loop and through ours: outputs' difference and throughput ratio.

Models: a built-in name or checkpoint (`ddim.load`), a training config (.toml: its net, random
init), or "tiny" (a random 8×8 U-Net, for smoke tests). Writes OUT/sampling.json (every timing)
and OUT/sampling.md (the tables, also printed).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

import ddim
from ddim.cli._args import device_arg, int_at_least, int_list
from ddim.execution import autocast, prepare
from ddim.io import atomic_write
from ddim.models import Model
from ddim.models.unet import UNet, UNetConfig
from ddim.sampling import PRECISIONS, seeded_latents
from ddim.train_config import TrainConfig, load_toml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ["mnist", str(ROOT / "configs" / "cifar10.toml")]
DEFAULT_VARIANTS = ["fp32", "bf16", "channels_last", "bf16+compile"]
TINY = UNetConfig(resolution=8, in_channels=1, out_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                  attn_resolutions=(4,), dropout=0.0, norm_groups=4)  # fmt: skip
_FLAGS = ("channels_last", "compile")


def variant(name: str) -> dict:
    """'bf16+channels_last+compile' → the `sample` keywords {precision, channels_last, compile}."""
    parts = name.split("+")
    precisions = [p for p in parts if p in PRECISIONS]
    unknown = [p for p in parts if p not in PRECISIONS and p not in _FLAGS]
    if unknown or len(precisions) > 1 or len(set(parts)) < len(parts):
        raise argparse.ArgumentTypeError(
            f"bad variant {name!r}: join at most one of {', '.join(PRECISIONS)} and any of "
            f"{', '.join(_FLAGS)} with '+'"
        )
    return {"precision": (precisions or ["fp32"])[0], **{f: f in parts for f in _FLAGS}}


def load_model(spec: str) -> tuple[str, Model]:
    """(a label, the model) for a --models entry."""
    if spec == "tiny":
        return "tiny (random init)", _random_model(TINY, ddim.NoiseSchedule.linear(1000))
    if spec.endswith(".toml"):
        config = TrainConfig.from_dict(load_toml(spec))
        return f"{Path(spec).name} (random init)", _random_model(config.net, config.schedule())
    return spec, ddim.load(spec)


def _random_model(config: UNetConfig, schedule: ddim.NoiseSchedule) -> Model:
    torch.manual_seed(0)
    shape = (config.in_channels, config.resolution, config.resolution)
    return Model(UNet(config).eval(), schedule, shape, "eps")


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """timed(fn): the wall seconds of fn(), the GPU's queued work included."""

    def timed(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return timed


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets the peak RSS (VmHWM) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak since reset_peak_memory: CUDA memory allocated, or the process's peak RSS (Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) / 1024
    except (OSError, TypeError):
        return None


def matmul_peaks(precisions: list[str], n: int, repeats: int, device: torch.device, timed) -> dict:
    """The best and median rate of an n×n matmul, GFLOP/s (2n³ FLOPs), for each precision."""
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    pairs = {p: torch.randn(2, n, n, device=device).to(dtypes[p]) for p in precisions}
    seconds: dict[str, list[float]] = {p: [] for p in precisions}
    for ab in pairs.values():
        torch.mm(ab[0], ab[1])  # warm-up
    for _ in range(repeats):
        for p, ab in pairs.items():
            seconds[p].append(timed(lambda ab=ab: torch.mm(ab[0], ab[1])))
    return {
        p: {"n": n, "gflops": 2 * n**3 / min(s) / 1e9, "gflops_median": 2 * n**3 / statistics.median(s) / 1e9}
        for p, s in seconds.items()
    }


def flops_per_image(model: Model, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """FLOPs of one network evaluation per image (convolutions, matmuls, attention), counted."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.net(*batch)
    return counter.get_total_flops() / len(batch[0])


def bench_model(spec: str, variants: dict[str, dict], args: argparse.Namespace, peaks: dict, timed) -> dict:
    """One model: network, sampling and memory of every variant (see the module docstring)."""
    label, model = load_model(spec)
    device, B = args.device, args.batch_size
    model.net.to(device).eval()
    x = seeded_latents(model.image_shape, 0, range(B)).to(device)  # (B, C, H, W): x_T of every run
    t = torch.full((B,), model.schedule.num_timesteps // 2, device=device)
    flops = flops_per_image(model, (x, t))
    m = _measure(label, model, variants, x, t, args.steps, args.repeats, timed)
    if "fp32" in variants:  # eager fp32 is the reference of the samples' errors
        reference = {S: m["outputs"]["fp32", S] for S in args.steps}
    else:
        reference = {S: ddim.sample(model, noise=x, steps=S, eta=0.0, device=device) for S in args.steps}
    base = "fp32" if "fp32" in variants else None
    rows = []
    for name, options in variants.items():
        evals = m["evals"][name]
        ms = statistics.median(evals) / B * 1e3
        gflops = flops / (ms / 1e3) / 1e9
        peak = peaks.get(options["precision"], {}).get("gflops")
        row = {
            "variant": name, **options, "warmup_seconds": m["warmup"][name],
            "ms_per_image": ms, "ms_per_image_all": [s / B * 1e3 for s in evals],
            "gflops": gflops, "fraction_of_peak": gflops / peak if peak else None,
            "speedup_vs_fp32": _speedup(m["evals"], base, name), "peak_memory_mb": m["memory"][name],
        }  # fmt: skip
        row["sampling"] = []
        for S in args.steps:
            runs = m["samples"][name, S]
            median = statistics.median(runs)
            row["sampling"].append({
                "steps": S, "seconds": median, "seconds_all": runs, "images_per_s": B / median,
                "overhead": median / (S * statistics.median(evals)),
                "speedup_vs_fp32": _speedup(m["samples"], base and (base, S), (name, S)),
                **_errors(m["outputs"][name, S], reference[S]),
            })  # fmt: skip
        rows.append(row)
    return {
        "model": label, "parameters": model.num_parameters, "image_shape": list(model.image_shape),
        "batch_size": B, "gflop_per_image": flops / 1e9, "variants": rows,
    }  # fmt: skip


def _measure(
    label: str, model: Model, variants: dict[str, dict], x, t, steps: list[int], repeats: int, timed
) -> dict:
    """Raw timings: warm-up, one evaluation and each S-step sample per repeat (variants alternating,
    the order reversed every other repeat), the samples, and the peak memory of the longest one.
    A progress bar on stderr counts the variants' warm-ups and runs."""
    device = x.device
    copies = {name: copy_model(model) for name in variants}
    nets = {name: prepare(copies[name].net, **_net_options(o)) for name, o in variants.items()}
    outputs, memory, longest = {}, {}, max(steps)

    def evaluate(name: str) -> None:
        with torch.no_grad(), autocast(device, variants[name]["precision"]):
            nets[name](x, t)

    def draw(name: str, S: int) -> None:
        outputs[name, S] = ddim.sample(
            copies[name], noise=x, steps=S, eta=0.0, device=device, **variants[name]
        )

    bar = tqdm(total=len(variants) * (repeats + 1), desc=label, unit="run", file=sys.stderr)
    warmup = {}
    for name in variants:
        bar.set_postfix_str(f"warm-up {name}")
        warmup[name] = timed(lambda name=name: (evaluate(name), draw(name, 2)))
        bar.update()
    evals: dict[str, list[float]] = {name: [] for name in variants}
    samples: dict[tuple[str, int], list[float]] = {(name, S): [] for name in variants for S in steps}
    for r in range(repeats):
        for name in variants if r % 2 == 0 else reversed(variants):
            bar.set_postfix_str(f"repeat {r + 1}/{repeats} {name}")
            evals[name].append(timed(lambda name=name: evaluate(name)))
            for S in sorted(steps):  # the longest last: the peak memory of a whole run
                if r == 0 and longest == S:
                    reset_peak_memory(device)
                samples[name, S].append(timed(lambda name=name, S=S: draw(name, S)))
            if r == 0:
                memory[name] = peak_memory_mb(device)
            bar.update()
    bar.close()
    return {"warmup": warmup, "evals": evals, "samples": samples, "outputs": outputs, "memory": memory}


def copy_model(model: Model) -> Model:
    """A model with its own copy of the network (channels_last converts weights in place)."""
    return Model(copy.deepcopy(model.net), model.schedule, model.image_shape, model.prediction)


def _net_options(options: dict) -> dict:
    return {"channels_last": options["channels_last"], "compile": options["compile"]}


def _speedup(times: dict, base, name) -> float | None:
    """Median over repeats of time(base) / time(name), pairing the runs of the same repeat."""
    if base is None:
        return None
    return statistics.median(b / v for b, v in zip(times[base], times[name], strict=True))


def _errors(x: torch.Tensor, ref: torch.Tensor) -> dict:
    """The samples' difference from eager fp32 ones from the same x_T, relative to their scale."""
    diff = x - ref
    return {
        "max_rel_err_vs_fp32": (diff.abs().max() / ref.abs().max()).item(),
        "rms_rel_err_vs_fp32": (diff.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item(),
    }


def machine(device: torch.device) -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError, TypeError):  # Linux
        cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())[1]
    return {
        "cpu": cpu, "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
    }  # fmt: skip


def markdown(report: dict) -> str:
    """The tables of docs/performance.md from a report."""
    m = report["machine"]
    gpu = f" ({m['gpu']})" if m["gpu"] else ""
    out = [f"Machine: {m['cpu']} ({m['capability']}), {m['threads']} threads, {m['device']}{gpu}; "
           f"PyTorch {m['torch']}.\n"]  # fmt: skip
    peaks = report["matmul_peak"].items()
    rows = [[p, v["n"], f"{v['gflops']:.0f}", f"{v['gflops_median']:.0f}"] for p, v in peaks]
    out.append(_table(["matmul", "n", "peak GFLOP/s", "median GFLOP/s"], rows))
    for net in report["networks"]:
        out.append(
            f"**{net['model']}**: {net['parameters']:,} parameters, {net['gflop_per_image']:.3g} GFLOP "
            f"per image per evaluation, batch {net['batch_size']}.\n"
        )
        steps = [s["steps"] for s in net["variants"][0]["sampling"]]
        per_s = [f"{name} S={s}" for s in steps for name in ("images/s", "overhead", "max rel. err")]
        header = ["variant", "ms/image", "GFLOP/s", "of peak", "speed-up", *per_s, "peak MB", "warm-up s"]
        rows = []
        for v in net["variants"]:
            cells = [v["variant"], f"{v['ms_per_image']:.2f}", f"{v['gflops']:.3g}"]
            cells += [_fmt(v["fraction_of_peak"], "{:.0%}"), _fmt(v["speedup_vs_fp32"], "{:.2f}×")]
            for s in v["sampling"]:
                cells += [
                    f"{s['images_per_s']:.2f}",
                    f"{s['overhead']:.3f}",
                    f"{s['max_rel_err_vs_fp32']:.1e}",
                ]
            rows.append([*cells, _fmt(v["peak_memory_mb"], "{:.0f}"), f"{v['warmup_seconds']:.1f}"])
        out.append(_table(header, rows))
    if report.get("diffusers"):
        d = report["diffusers"]
        out.append(
            f"**diffusers** ({d['config']}, random init, {d['parameters']:,} parameters): DDIM η = 0, "
            f"S = {d['steps']}, batch {d['batch_size']}, the same x_T.\n"
        )
        rows = [["diffusers' DDIMScheduler loop, fp32", f"{d['diffusers']['images_per_s']:.2f}", "1", "", ""]]
        for o in d["ours"]:
            rows.append([f"ddim.sample, {o['variant']}", f"{o['images_per_s']:.2f}",
                         f"{o['throughput_vs_diffusers']:.2f}×", f"{o['max_abs_diff']:.1e}",
                         f"{o['max_rel_diff']:.1e}"])  # fmt: skip
        out.append(_table(["sampler", "images/s", "vs diffusers", "max abs diff", "max rel diff"], rows))
    return "\n".join(out)


def _table(header: list[str], rows: list[list]) -> str:
    lines = [header, ["---"] + ["---:"] * (len(header) - 1), *rows]
    return "".join("| " + " | ".join(str(c) for c in line) + " |\n" for line in lines)


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else spec.format(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated (default: mnist, cifar10)"
    )
    p.add_argument(
        "--variants", default=",".join(DEFAULT_VARIANTS), help=f"(default: {','.join(DEFAULT_VARIANTS)})"
    )
    p.add_argument("--steps", type=int_list, default=None, help="S values (default: 10,50; --quick: 2)")
    p.add_argument("--batch-size", type=int_at_least(1), default=None, help="(default: 32; --quick: 2)")
    p.add_argument("--repeats", type=int_at_least(1), default=None, help="(default: 5; --quick: 2)")
    p.add_argument("--matmul-n", type=int_at_least(1), default=None, help="(default: 2048; --quick: 128)")
    p.add_argument(
        "--diffusers-config",
        choices=("ddpm-cifar10-32", "small", "none"),
        default="ddpm-cifar10-32",
        help="the diffusers comparison's U-Net, or none to skip it (default: ddpm-cifar10-32)",
    )
    p.add_argument("--diffusers-steps", type=int_at_least(1), default=None, help="(default: 10; --quick: 2)")
    p.add_argument(
        "--best",
        default=None,
        help="our variant compared with diffusers besides fp32 (default: the last of --variants)",
    )
    p.add_argument("--device", type=device_arg, default="cpu", help="(default: cpu)")
    p.add_argument("--quick", action="store_true", help="a smoke test: tiny sizes, 2 repeats")
    p.add_argument("--out", type=Path, default=Path("."), help="folder for sampling.json and sampling.md")
    args = p.parse_args(argv)  # fmt: skip
    quick = args.quick
    defaults = {"steps": ([2], [10, 50]), "batch_size": (2, 32), "repeats": (2, 5), "matmul_n": (128, 2048),
                "diffusers_steps": (2, 10)}  # fmt: skip
    for key, (small, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, small if quick else full)
    try:
        args.variant_options = {name: variant(name) for name in args.variants.split(",")}
        args.best = args.best or args.variants.split(",")[-1]
        variant(args.best)
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    timed = timer(args.device)
    variants = args.variant_options
    precisions = sorted({"fp32", "bf16", *(v["precision"] for v in variants.values())}, key=PRECISIONS.index)
    report = {"command": " ".join(["python -m benchmarks.sampling", *(argv or sys.argv[1:])]),
              "machine": machine(args.device)}  # fmt: skip
    report["matmul_peak"] = matmul_peaks(precisions, args.matmul_n, 3 * args.repeats, args.device, timed)
    report["networks"] = [
        bench_model(s, variants, args, report["matmul_peak"], timed) for s in args.models.split(",")
    ]
    if args.diffusers_config != "none":
        from benchmarks.vs_diffusers import compare  # diffusers is a dev dependency

        compared = {name: variant(name) for name in ("fp32", args.best)}
        report["diffusers"] = compare(
            args.diffusers_config, compared, steps=args.diffusers_steps, batch_size=args.batch_size,
            repeats=args.repeats, device=args.device, timed=timed,
        )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "sampling.json", lambda f: f.write(json.dumps(report, indent=2).encode()))
    table = markdown(report)
    atomic_write(args.out / "sampling.md", lambda f: f.write(table.encode()))
    print(table)
    print(f"wrote {args.out / 'sampling.json'} and {args.out / 'sampling.md'}")
    return report


if __name__ == "__main__":
    main()
