"""benchmarks/bench_train.py --quick on the CPU (CI): the one table and the JSON have their fields
and every ratio and projection is finite. Correctness only: no timing is asserted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_bench_prints_one_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--quick", "--out", str(out),
                           "--work", str(tmp_path / "work"), "--accelerator", "cpu", "--eval"],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["quick"] and res["precision"] == "32-true" and res["device"].startswith("CPU")
    assert [r["batch"] for r in res["compute_only"]] == [4, 8]
    assert all(r["img_per_s"] > 0 and r["infer_img_per_s"] > 0 and r["gpu_util"] is None for r in res["compute_only"])
    cells = {(r["loader"], r["batch"]) for r in res["end_to_end"]}
    assert cells == {("workers", 4), ("device", 4), ("device", 8)}
    for r in res["end_to_end"]:
        assert r["epochs"] == 2 and r["train_images"] == res["data"]["n_train"] > 0 and r["val_images"] > 0
        assert 0 <= r["input_wait_share"] <= 1 and r["val_s"] > 0 and 0 <= r["best_val_f1_macro"] <= 1
        assert r["gpu_util"] is None  # "n/a" on the CPU
    assert {(q["loader"], q["batch"]) for q in res["ratios"]} == cells
    assert all(math.isfinite(q["ratio"]) and q["ratio"] > 0 for q in res["ratios"])
    p = res["projection"]
    assert p["runs"] == 13 * 3 * 2 and len(p["per_run"]) == 13 * 2
    assert math.isfinite(p["serial_minutes"]) and p["serial_minutes"] > 0 and "30 epochs" in p["how"]
    assert res["data"]["synthetic"] and res["data"]["sets"] == 2
    ev = res["eval_cost"]  # calibration + evaluation of one run, scaled into the projection
    assert ev["seconds"] > 0 and ev["n_val"] == res["data"]["n_val"] and ev["n_test"] > 0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 2 + 3  # header, rule, 2 compute-only rows, 3 end-to-end rows: ONE table
    assert "n/a" in lines[2] and "projected planes table (78 runs, 30 epochs each, evaluation included)" in proc.stdout
