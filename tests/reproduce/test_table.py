"""Aggregation of finished runs: intervals, the LEAKY flag, the leakage line, CSV columns."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
from scipy import stats

from fetalplanes.core import atomic
from fetalplanes.reproduce.table import aggregate, to_csv, to_markdown, write_tables


def _record(out: Path, variant: str, split: str, seed: int, top1: float) -> dict:
    run = out / "runs" / "planes" / split / variant / f"seed{seed}"
    metrics = {"n": 40, "top1": top1, "top2": min(1.0, top1 + 0.1), "f1_macro": top1 - 0.05, "f1_weighted": top1 - 0.02,
               "ci95": {"top1": {"low": top1 - 0.1, "high": min(1.0, top1 + 0.1)},
                        "f1_macro": {"low": top1 - 0.15, "high": top1}}}
    atomic.write_json(run / "eval" / "metrics.json", metrics)
    rec = {"variant": variant, "split": split, "task": "planes", "seed": seed, "leaky": split == "image-8020",
           "backbone": "efficientnet_b0", "attention": "cbam", "head": "mlp512-256", "finetune": "full",
           "pretrained": "random init", "train_path": "fit", "image_size": 64, "max_epochs": 1, "train_wall_s": 1.0,
           "metrics_path": str((run / "eval" / "metrics.json").relative_to(out)), "metrics": metrics,
           "calibration": {"temperature": 1.5, "test_ece_before": 0.2, "test_ece_after": 0.1},
           "costs": {"params_total": 4_000_000, "params_trainable": 4_000_000, "gflops": 0.06, "cpu_latency_ms": 5.0}}
    atomic.write_json(run / "done.json", rec)
    return rec


def test_seed_statistics_and_flags(tmp_path: Path) -> None:
    tops = [0.60, 0.70, 0.65]
    for seed, t in enumerate(tops):
        _record(tmp_path, "b0_cbam", "official", seed, t)
    _record(tmp_path, "b0_cbam", "image-8020", 0, 0.90)
    paths = write_tables(tmp_path)
    rows = list(csv.DictReader(io.StringIO(paths["results_csv"].read_text())))
    assert [(r["split"], r["seeds"], r["leaky"]) for r in rows] == [("official", "3", "False"), ("image-8020", "1", "True")]
    honest = rows[0]
    half = stats.t.ppf(0.975, 2) * statistics.stdev(tops) / 3 ** 0.5
    assert float(honest["top1_mean"]) == pytest.approx(statistics.fmean(tops), abs=1e-5)
    assert float(honest["top1_ci_low"]) == pytest.approx(statistics.fmean(tops) - half, abs=1e-5)
    assert honest["top1_ci_kind"] == "t"
    assert rows[1]["top1_ci_kind"] == "bootstrap" and float(rows[1]["top1_ci_low"]) == pytest.approx(0.80)
    md = paths["results_md"].read_text()
    table_lines = [line for line in md.splitlines() if line.startswith("| `")]
    assert len(table_lines) == 2
    assert "LEAKY" in table_lines[1] and "LEAKY" not in table_lines[0]
    assert "top-1 0.9000 on image-8020 vs 0.6500 on official: +0.2500" in md


def test_intervals_stay_in_unit_range(tmp_path: Path) -> None:
    recs = [_record(tmp_path, "x", "official", s, t) for s, t in enumerate([0.99, 0.5])]
    row = aggregate(tmp_path, recs)[0]
    assert 0.0 <= row["top1_ci_low"] <= row["top1_ci_high"] <= 1.0
    assert "top1_boot_low" in to_csv([row]).splitlines()[0]
    assert "| `x` |" in to_markdown([row], {})


def test_one_seed_shows_std_na_and_survives_a_refused_interval(tmp_path: Path) -> None:
    rec = _record(tmp_path, "x", "official", 0, 0.8)
    row = aggregate(tmp_path, [rec])[0]
    assert row["top1_std"] != row["top1_std"]  # NaN: undefined with one seed
    rec.pop("metrics_path")  # aggregate from the record's copy, edited below
    rec["metrics"]["ci95"].update(unit="patient", n_units=12, n_boot=1000)
    row = aggregate(tmp_path, [rec])[0]
    md = to_markdown([row], {})
    assert "0.8000 ± n/a [0.700, 0.900]ᵇ" in md and "1000 resamples of 12 patients" in md
    rec["metrics"]["ci95"] = {"top1": None, "f1_macro": None, "status": "too few units", "n_units": 3}
    row = aggregate(tmp_path, [rec])[0]
    assert row["top1_ci_kind"] == "none" and "0.8000 ± n/a |" in to_markdown([row], {})


def test_runs_that_shared_a_gpu_are_listed(tmp_path: Path) -> None:
    alone = _record(tmp_path, "b0_cbam", "official", 0, 0.7)
    shared = [_record(tmp_path, "v2b0_cbam", "official", s, 0.7) for s in (0, 1)]
    shared[0].update(shared_device=True, concurrent_jobs=3)
    shared[1].update(shared_device=False, concurrent_jobs=1)
    rows = aggregate(tmp_path, [alone, *shared])
    by = {r["variant"]: r for r in rows}
    assert (by["b0_cbam"]["shared_device"], by["v2b0_cbam"]["shared_device"]) == (0, 1)
    md = to_markdown(rows, {})
    assert "Runs that shared a GPU" in md and "`v2b0_cbam` (planes, official): 1 of 2 run(s), --jobs 3" in md
    assert "`b0_cbam` (planes" not in md.split("Runs that shared a GPU")[1]
    assert "Runs that shared a GPU" not in to_markdown([by["b0_cbam"]], {})
