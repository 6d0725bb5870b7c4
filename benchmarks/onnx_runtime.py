"""One network evaluation on the CPU: ONNX Runtime running `ddim export --format onnx`'s file
against PyTorch eager (fp32), on the same inputs.

Each network is exported once (`ddim.export.to_onnx`); then, for each batch size, the two engines
take turns (PyTorch, ONNX Runtime, PyTorch, …) for `--rounds` rounds of `--calls` calls each, so
that a change in the machine's load hits both alike. Reported per engine: ms per image (median
over rounds, and every round), the ratio of the medians, and the outputs' max difference relative
to max |ε|. Both engines get `--threads` threads (PyTorch `set_num_threads`, ONNX Runtime
`intra_op_num_threads`, one inter-op thread). It measures; it asserts nothing.

    OMP_NUM_THREADS=1 python -m benchmarks.onnx_runtime --out docs/results/onnx-runtime.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

import ddim
from ddim.export import to_onnx
from ddim.models import Model
from ddim.models.unet import UNet, UNetConfig


def load(name: str) -> Model:
    """`cifar10`: DDPM's CIFAR-10 U-Net, random init (35,746,307 parameters); `tiny`: a 16×16
    test-sized net; else any name or path `ddim.load` takes."""
    if name in ("cifar10", "tiny"):
        torch.manual_seed(0)
        small = {"resolution": 16, "ch": 32, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (8,)}
        config = UNetConfig(dropout=0.0, **(small if name == "tiny" else {}))
        return Model(
            UNet(config).eval(), ddim.NoiseSchedule.linear(), (3, config.resolution, config.resolution)
        )
    return ddim.load(name)


def time_calls(run, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) / calls


def measure(model: Model, onnx_path: Path, batch: int, rounds: int, calls: int, threads: int) -> dict:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, *model.image_shape, generator=g)
    t = torch.randint(0, model.schedule.num_timesteps, (batch,), generator=g)
    feed = {"x_t": x.numpy(), "t": t.numpy()}

    def run_torch() -> torch.Tensor:
        with torch.no_grad():
            return model.net(x, t)

    def run_onnx() -> np.ndarray:
        return session.run(None, feed)[0]

    ours, theirs = run_torch(), run_onnx()  # also the warm-up
    times: dict[str, list[float]] = {"pytorch": [], "onnxruntime": []}
    for _ in range(rounds):
        times["pytorch"].append(time_calls(run_torch, calls) * 1e3 / batch)
        times["onnxruntime"].append(time_calls(run_onnx, calls) * 1e3 / batch)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {
        "batch_size": batch,
        "ms_per_image": medians,
        "ms_per_image_all": times,
        "onnxruntime_speedup": medians["pytorch"] / medians["onnxruntime"],
        "max_rel_diff": float(np.abs(theirs - ours.numpy()).max() / ours.abs().max().item()),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mnist,cifar10", help="comma-separated (default: mnist,cifar10)")
    p.add_argument("--batch-sizes", default="1,16", help="comma-separated (default: 1,16)")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds per engine (default: 7)")
    p.add_argument("--calls", type=int, default=3, help="calls timed together per round (default: 3)")
    p.add_argument("--threads", type=int, default=1, help="threads for each engine (default: 1)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "rounds": args.rounds, "calls": args.calls, "networks": [],
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = load(name)
            start = time.perf_counter()
            path = to_onnx(model, Path(tmp) / f"{Path(name).stem}.onnx")
            entry = {"model": name, "parameters": model.num_parameters,
                     "image_shape": list(model.image_shape), "export_s": time.perf_counter() - start,
                     "onnx_bytes": path.stat().st_size, "batches": []}  # fmt: skip
            for batch in map(int, args.batch_sizes.split(",")):
                m = measure(model, path, batch, args.rounds, args.calls, args.threads)
                entry["batches"].append(m)
                print(f"{name:>8} batch {batch:>3}: PyTorch {m['ms_per_image']['pytorch']:8.2f} ms/image, "
                      f"ONNX Runtime {m['ms_per_image']['onnxruntime']:8.2f} ms/image, "
                      f"ratio {m['onnxruntime_speedup']:.2f}x, max rel diff {m['max_rel_diff']:.1e}",
                      flush=True)  # fmt: skip
            report["networks"].append(entry)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
