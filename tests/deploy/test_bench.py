"""`fetalplanes bench`: timing protocol, CPU peak estimate, profiles, report and a tiny CLI run.

Speed targets are never asserted here (they are measured by the full bench run); these
tests check that the numbers are computed the way the report says they are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fetalplanes.deploy.bench import add_speedups, rows_for, targets
from fetalplanes.deploy.bench_models import select_models
from fetalplanes.deploy.bench_worker import Timing, peak_rss_mb, time_calls
from fetalplanes.deploy.profile import cpu_peak, ort_op_totals, roofline_share

CPUINFO = """processor\t: 0
model name\t: Test CPU @ 2.00GHz
cpu MHz\t\t: 2500.000
flags\t\t: fpu sse2 avx {extra}
"""


@pytest.mark.parametrize(
    "extra, isa, per_cycle",
    [("avx2 fma avx512f avx512_vnni", "avx512f", 64), ("avx2 fma", "avx2", 32), ("avx2", "avx2", 16), ("", "avx", 16)],
)
def test_cpu_peak_formula(extra: str, isa: str, per_cycle: int) -> None:
    peak = cpu_peak(CPUINFO.format(extra=extra), cores=2)
    assert peak["isa"] == isa and peak["fp32_flops_per_cycle_per_core"] == per_cycle
    assert peak["ghz"] == pytest.approx(2.5)
    assert peak["peak_gflops_fp32"] == pytest.approx(2 * 2.5 * per_cycle)
    assert peak["peak_gops_int8"] == pytest.approx(peak["peak_gflops_fp32"] * (4 if "vnni" in extra else 1))
    assert "estimate" in peak["note"]


def test_roofline_share() -> None:
    # 1 GFLOP per image at 50 img/s on a 200 GFLOP/s machine uses a quarter of it.
    assert roofline_share(1e9, 50.0, 200.0) == pytest.approx(0.25)


def test_time_calls_warmup_repeats_and_median() -> None:
    calls = []
    timing = Timing(warmup=2, min_repeats=4, max_repeats=6, budget_s=0.0)
    cell = time_calls(lambda: calls.append(1), batch=8, timing=timing)
    assert len(calls) == 2 + cell["repeats"] and cell["repeats"] == 4
    assert cell["img_per_s"] == pytest.approx(8 / (cell["latency_ms_p50"] / 1e3))
    assert cell["latency_ms_p95"] >= cell["latency_ms_p50"] >= cell["latency_ms_min"]
    capped = time_calls(lambda: None, 1, Timing(warmup=0, min_repeats=1, max_repeats=3, budget_s=60.0))
    assert capped["repeats"] == 3


def test_time_calls_is_bounded_by_time() -> None:
    """Slow cells (DenseNet-169 eager at batch 32) stop at max_s instead of min_repeats."""
    import time

    calls = []

    def slow() -> None:
        calls.append(1)
        time.sleep(0.05)

    cell = time_calls(slow, 1, Timing(warmup=10, min_repeats=50, budget_s=0.0, max_s=0.2))
    assert 1 <= cell["repeats"] < 50
    assert len(calls) - cell["repeats"] < 10  # warm-up cut short too


def test_peak_rss_grows_with_allocation() -> None:
    # A fresh process: the high-water mark of the pytest process may already sit far above
    # anything a small allocation adds, which made an in-process check depend on test order.
    code = (
        "from fetalplanes.deploy.bench_worker import peak_rss_mb\n"
        "before = peak_rss_mb()\n"
        "block = bytearray(64 * 2**20)\n"
        "block[::4096] = b'x' * len(block[::4096])\n"
        "print(before, peak_rss_mb())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    before, after = map(float, out.stdout.split())
    assert after >= before + 48


def test_ort_op_totals(tmp_path: Path) -> None:
    events = [
        {"cat": "Node", "name": "conv1_kernel_time", "dur": 300, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "conv2_kernel_time", "dur": 100, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "conv2_fence_before", "dur": 999, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "mul_kernel_time", "dur": 50, "args": {"op_name": "Mul"}},
        {"cat": "Session", "name": "model_run", "dur": 10_000},
    ]
    path = tmp_path / "prof.json"
    path.write_text(json.dumps(events))
    totals = ort_op_totals(path)
    assert totals == {"Conv": {"us": 400.0, "calls": 2}, "Mul": {"us": 50.0, "calls": 1}}


def test_select_models(tmp_path: Path) -> None:
    rows = select_models(preset="paper_lite0")
    names = [r.name for r in rows]
    assert names[0] == "paper_lite0" and rows[0].role == "paper"
    assert {"baseline_b0_linear", "densenet169", "mobilenetv3", "baseline_lite0_linear", "paper_v2b0", "paper_b0"} <= set(names)
    assert len(names) == len(set(names))
    assert [r.name for r in select_models(peers=False)] == ["paper_lite0"]
    assert [r.name for r in select_models(only=["densenet169"])] == ["densenet169"]
    with pytest.raises(ValueError, match="densenet121"):
        select_models(only=["densenet121"])
    with pytest.raises(ValueError, match="no_such_preset"):
        select_models(preset="no_such_preset")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        select_models(checkpoint=tmp_path / "missing.ckpt")


def _entry(name: str, role: str, gflops: float) -> dict:
    return {"name": name, "role": role, "image_size": 224, "params": {"total": 10, "trainable": 5},
            "gflops_per_image": gflops, "flops_per_image": gflops * 1e9, "torch_weights_bytes": 100,
            "onnx_fp32": {"bytes": 90}}


def _result(backend: str, *img_per_s: float) -> dict:
    cells = [{"batch_size": 2**i, "img_per_s": v, "latency_ms_p50": 1.0, "latency_ms_p95": 2.0} for i, v in enumerate(img_per_s)]
    return {"backend": backend, "cells": cells, "rss_before_model_mb": 1.0}


def test_rows_speedups_and_targets() -> None:
    machine = {"peak_gflops_fp32": 100.0, "peak_gops_int8": 400.0}
    paper, peer = _entry("paper_lite0", "paper", 0.5), _entry("densenet169", "peer", 6.0)
    rows = rows_for(paper, "torch", _result("torch", 20.0, 40.0), machine)
    rows += rows_for(paper, "ort_fp32", _result("ort_fp32", 100.0, 150.0), machine)
    rows += rows_for(paper, "ort_int8", _result("ort_int8", 130.0, 160.0), machine)
    rows += rows_for(peer, "ort_fp32", {"backend": "ort_fp32", "error": "boom"}, machine)
    add_speedups(rows)
    fp32_b1 = next(r for r in rows if r["backend"] == "ort_fp32" and r.get("batch_size") == 1)
    assert fp32_b1["speedup_vs_eager"] == pytest.approx(100.0 / 20.0)
    assert fp32_b1["roofline_share"] == pytest.approx(0.5 * 100.0 / 100.0)
    assert fp32_b1["file_bytes"] == 90
    int8_b1 = next(r for r in rows if r["backend"] == "ort_int8" and r.get("batch_size") == 1)
    assert int8_b1["roofline_share"] == pytest.approx(0.5 * 130.0 / 400.0)
    assert next(r for r in rows if r["model"] == "densenet169")["error"] == "boom"
    t = targets(rows)
    assert t["best_ort_backend"] == "ort_int8" and t["ort_bs1_img_s"] == 130.0 and t["met_ort_bs1"]
    assert t["ort_vs_eager_bs1"] == pytest.approx(130.0 / 20.0) and t["met_ort_vs_eager"]
    slow = [dict(r, img_per_s=r["img_per_s"] / 10) if r["backend"].startswith("ort") and "img_per_s" in r else r for r in rows]
    t = targets(slow)
    assert not t["met_ort_bs1"] and not t["met_ort_vs_eager"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "fetalplanes.cli", *args], capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_bench_cli_quick(tmp_path: Path) -> None:
    """A tiny real run: paper model at 64 px, every backend, one fresh process per cell."""
    out = tmp_path / "bench"
    proc = run_cli("bench", "--quick", "--no-peers", "--image-size", "64", "--exporter", "torchscript", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "bench.json").read_text())
    model = result["models"][0]
    assert model["name"] == "paper_lite0" and model["image_size"] == 64
    assert model["params"]["total"] >= model["params"]["trainable"] > 0 and model["flops_per_image"] > 0
    rows = [r for r in result["rows"] if "img_per_s" in r]
    measured = {(r["backend"], r["batch_size"]) for r in rows}
    for backend in ("torch", "torch_cl", "ort_fp32"):
        assert {(backend, 1), (backend, 8)} <= measured
    int8 = [r for r in result["rows"] if r["backend"] == "ort_int8"]
    assert int8 and (all("img_per_s" in r for r in int8) or "error" in int8[0])  # measured, or the error is recorded
    for r in rows:
        assert r["img_per_s"] > 0 and r["latency_ms_p95"] >= r["latency_ms_p50"] > 0
        assert r["peak_rss_mb"] > r["rss_before_model_mb"] > 0 and r["file_bytes"] > 0
    # Fresh processes: ONNX Runtime cells never import torch, so they need far less memory.
    ort_rss = max(r["peak_rss_mb"] for r in rows if r["backend"] == "ort_fp32")
    torch_rss = min(r["peak_rss_mb"] for r in rows if r["backend"] == "torch")
    assert ort_rss < torch_rss
    assert result["targets"]["ort_bs1_img_s"] > 0
    assert result["analysis"]["ort_profile_bs1"]["top_ops"][0]["op"]
    assert result["analysis"]["torch_profile_bs1"]["top_ops"]
    assert len(result["analysis"]["ort_tuning_bs1"]) >= 4
    md = (out / "bench.md").read_text()
    assert "| model | px | backend |" in md and "peak" in md
    assert "img/s" in proc.stdout


@pytest.mark.slow  # trains the shared tiny checkpoint first
def test_bench_checkpoint_in_process(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """--checkpoint benches the trained model at its own input size (from its spec)."""
    out = tmp_path / "bench"
    proc = run_cli(
        "bench", "--quick", "--no-peers", "--checkpoint", str(tiny_checkpoint), "--backends", "ort_fp32",
        "--batch-sizes", "1,2", "--in-process", "--no-profile", "--no-tune", "--exporter", "torchscript", "--out", str(out),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "bench.json").read_text())
    assert [m["name"] for m in result["models"]] == ["checkpoint"]
    assert {r["batch_size"] for r in result["rows"]} == {1, 2}
    assert all(r["image_size"] == 64 for r in result["rows"])


def test_bench_cli_rejects_bad_options(tmp_path: Path) -> None:
    proc = run_cli("bench", "--backends", "tensorrt", "--out", str(tmp_path))
    assert proc.returncode == 2 and "tensorrt" in proc.stderr
    proc = run_cli("bench", "--models", "resnet50", "--out", str(tmp_path))
    assert proc.returncode == 2 and "resnet50" in proc.stderr
