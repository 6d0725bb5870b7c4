"""benchmarks/sampling.py in its quick mode on a tiny net: it runs, and its report has every field.
Nothing here is a speed: the numbers are only checked to be there and to be consistent."""

import argparse
import json
import math

import pytest
from benchmarks.sampling import main, variant


def test_quick_run_reports_every_measurement(tmp_path, capsys):
    main(["--quick", "--models", "tiny", "--variants", "fp32,bf16,channels_last",
          "--best", "bf16+channels_last", "--diffusers-config", "small", "--out", str(tmp_path)])  # fmt: skip
    report = json.loads((tmp_path / "sampling.json").read_text())
    assert (tmp_path / "sampling.md").read_text() in capsys.readouterr().out
    assert set(report["machine"]) >= {"cpu", "threads", "device", "torch"}
    assert set(report["matmul_peak"]) == {"fp32", "bf16"}
    assert all(p["gflops"] >= p["gflops_median"] > 0 for p in report["matmul_peak"].values())

    (net,) = report["networks"]
    assert net["batch_size"] == 2
    assert net["gflop_per_image"] > 0
    assert [v["variant"] for v in net["variants"]] == ["fp32", "bf16", "channels_last"]
    for v in net["variants"]:
        assert len(v["ms_per_image_all"]) == 2  # one per repeat
        assert v["gflops"] == pytest.approx(net["gflop_per_image"] / (v["ms_per_image"] / 1e3))
        assert v["fraction_of_peak"] > 0
        assert v["peak_memory_mb"] > 0
        (s,) = v["sampling"]
        assert s["steps"] == 2
        assert s["images_per_s"] == pytest.approx(2 / s["seconds"])
        assert s["overhead"] > 0
        assert math.isfinite(s["max_rel_err_vs_fp32"])
    fp32, bf16, cl = net["variants"]
    assert fp32["speedup_vs_fp32"] == 1.0
    assert fp32["sampling"][0]["max_rel_err_vs_fp32"] == 0.0  # fp32 eager is the reference itself
    assert bf16["sampling"][0]["max_rel_err_vs_fp32"] > 0  # autocast ran
    assert (cl["channels_last"], cl["compile"]) == (True, False)

    d = report["diffusers"]
    assert (d["config"], d["steps"], d["batch_size"]) == ("small", 2, 2)
    assert [o["variant"] for o in d["ours"]] == ["fp32", "bf16+channels_last"]
    # the same weights through the converter, the same x_T and steps: float32 rounding only
    assert d["ours"][0]["max_rel_diff"] < 1e-5
    assert all(o["throughput_vs_diffusers"] > 0 for o in d["ours"])


def test_variant_names():
    assert variant("bf16+channels_last+compile") == {
        "precision": "bf16",
        "channels_last": True,
        "compile": True,
    }
    assert variant("compile") == {"precision": "fp32", "channels_last": False, "compile": True}
    for bad in ("bf16+fp16", "int8", "compile+compile"):
        with pytest.raises(argparse.ArgumentTypeError, match="bad variant"):
            variant(bad)
