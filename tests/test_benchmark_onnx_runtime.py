"""benchmarks/onnx_runtime.py on a tiny net: it runs and its report has every field (no speed is
checked: the numbers are only checked to be there and consistent)."""

import json

import pytest


@pytest.mark.slow  # an ONNX export takes 20-40 s on the 2-core machine
def test_quick_run_reports_every_measurement(tmp_path):
    pytest.importorskip("onnxruntime")
    from benchmarks.onnx_runtime import main

    main(["--models", "tiny", "--batch-sizes", "1,3", "--rounds", "2", "--calls", "1",
          "--out", str(tmp_path / "r.json")])  # fmt: skip
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["machine"]) >= {"cpu", "threads", "torch", "onnxruntime"}
    (net,) = report["networks"]
    assert net["model"] == "tiny"
    assert net["onnx_bytes"] > 4 * net["parameters"] * 0.9  # the weights are inside the file
    assert [b["batch_size"] for b in net["batches"]] == [1, 3]
    for b in net["batches"]:
        assert all(len(v) == 2 for v in b["ms_per_image_all"].values())
        assert b["onnxruntime_speedup"] == pytest.approx(
            b["ms_per_image"]["pytorch"] / b["ms_per_image"]["onnxruntime"]
        )
        assert b["max_rel_diff"] < 1e-5
