"""report.md says what the intervals are (unit, clusters, resamples) or why there are none,
prints undefined values as n/a, and the report folder is written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fetalplanes.core.spec import ModelSpec
from fetalplanes.data.records import Sample
from fetalplanes.evaluation import report
from fetalplanes.evaluation.metrics import evaluate_arrays

NAMES = ("a", "b", "c")
SPEC = ModelSpec("toy", "planes", NAMES, {})


def _case(n_patients: int, unit: str = "patient") -> tuple[dict, list[Sample], np.ndarray]:
    y = np.array([0, 0, 1, 1] * n_patients)
    probs = np.eye(3)[[0, 0, 1, 0] * n_patients] * 0.9 + 0.1 / 3
    samples = [Sample(Path(f"img{i}.png"), int(v), f"p{i // 4}", {"US_Machine": "E6" if i % 2 else "S10"})
               for i, v in enumerate(y)]
    m = evaluate_arrays(y, probs, NAMES, [s.patient for s in samples],
                        {"US_Machine": [s.meta["US_Machine"] for s in samples]}, n_boot=200, unit=unit)
    m.update(split="test", data="toy.csv", data_kind="csv")
    return m, samples, probs


def test_report_states_unit_clusters_and_resamples() -> None:
    m, _, _ = _case(12)
    text = report.render_report(m, SPEC)
    assert "percentile bootstrap, 200 resamples of 12 patients (clusters" in text
    assert "n = 48 images, 12 patients" in text
    assert f"{m['ci95']['top1']['low']:.4f}-{m['ci95']['top1']['high']:.4f}" in text
    assert "averaged over the 2 classes present in y_true" in text
    assert "| c | n/a | n/a | n/a | 0 |" in text  # class c: never true, never predicted
    assert "| E6 | 24 | 2 |" in text
    json.dumps(m, allow_nan=False)  # undefined values are null, never NaN


def test_report_says_why_there_is_no_interval() -> None:
    m, _, _ = _case(3)
    text = report.render_report(m, SPEC)
    assert "top-1: 0.7500 (95 % CI n/a)" in text
    assert "intervals: none: no interval: only 3 patient(s)" in text and "(3 patients)" in text
    image = _case(3, unit="image")[0]
    assert "200 resamples of 12 images (images resampled as if independent" in report.render_report(image, SPEC)


def test_a_failing_render_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case: a KeyError inside render_report used to leave a half-written folder."""
    m, samples, probs = _case(12)
    out = tmp_path / "eval"

    def broken(*_args):
        raise KeyError("n_unit")

    monkeypatch.setattr(report, "render_report", broken)
    with pytest.raises(KeyError):
        report.write_report(out, m, SPEC, samples, probs, "test")
    assert list(tmp_path.iterdir()) == []


def test_report_folder_written_whole_and_keeps_other_files(tmp_path: Path) -> None:
    m, samples, probs = _case(12)
    out = tmp_path / "eval"
    report.write_report(out, m, SPEC, samples, probs, "test")
    assert sorted(p.name for p in out.iterdir()) == ["confusion_matrix.png", "metrics.json", "predictions.csv", "report.md"]
    assert json.loads((out / "metrics.json").read_text())["ci95"]["n_units"] == 12
    (out / "best.ckpt").write_text("keep me")
    report.write_report(out, m, SPEC, samples, probs, "test")
    assert (out / "best.ckpt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["eval"]  # no temporary sibling left
