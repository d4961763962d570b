"""predict's JSON and CSV: an out-of-distribution answer carries no plane in ``label``; its top class
is reported only as ``nearest_plane`` (docs/ood.md). An abstention keeps its suggested label."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from fetalplanes.cli.train import _print_csv, _print_json
from fetalplanes.core.postprocess import decide
from fetalplanes.core.spec import ModelSpec, Preprocessing
from fetalplanes.runtime.predictor import FileResult

CLASSES = ["Fetal brain", "Fetal femur", "Other"]


def _results() -> list[FileResult]:
    probs = np.array([[0.1, 0.7, 0.2], [0.4, 0.3, 0.3], [0.1, 0.8, 0.1]])
    preds = decide(probs, CLASSES, k=2, abstain_threshold=0.5, ood_scores=np.array([5.0, 0.0, 0.0]), ood_threshold=1.0)
    return [FileResult(i, Path(f"{name}.png"), p) for i, (name, p) in enumerate(zip(("ood", "abstain", "plane"), preds))]


SPEC = ModelSpec(name="m", task="plane", class_names=tuple(CLASSES), architecture={},
                 preprocessing=Preprocessing(image_size=32))


def test_json_gives_no_label_for_an_out_of_distribution_answer(capsys: pytest.CaptureFixture[str]) -> None:
    _print_json(_results(), SPEC, 2)
    rows = {Path(r["file"]).stem: r for r in json.loads(capsys.readouterr().out)}
    assert rows["ood"]["state"] == "out_of_distribution"
    assert rows["ood"]["label"] is None and rows["ood"]["nearest_plane"] == "Fetal femur"
    assert rows["abstain"]["label"] == "Fetal brain" and rows["abstain"]["nearest_plane"] is None
    assert rows["plane"]["label"] == "Fetal femur" and rows["plane"]["nearest_plane"] is None


def test_csv_gives_no_label_for_an_out_of_distribution_answer(capsys: pytest.CaptureFixture[str]) -> None:
    _print_csv(_results(), SPEC, 2)
    rows = {Path(r["file"]).stem: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert rows["ood"]["state"] == "out_of_distribution"
    assert rows["ood"]["label"] == "" and rows["ood"]["nearest_plane"] == "Fetal femur"
    assert rows["plane"]["label"] == "Fetal femur" and rows["plane"]["nearest_plane"] == ""
