"""stream and the OOD gate: a frame the gate rejects is never a best frame, however confident."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fetalplanes.core.frames import Frame
from fetalplanes.deploy.stream import _Tracker


def _frame(i: int) -> Frame:
    return Frame(index=i, time_s=i / 10, image=Image.new("L", (8, 8), i))


def test_rejected_frame_is_never_best_even_when_most_confident() -> None:
    t = _Tracker(("a", "b"), abstain_threshold=0.5, ood_threshold=1.0)
    sure, fair = np.array([0.99, 0.01]), np.array([0.7, 0.3])
    t.add(_frame(0), sure, sure, 0.01, ood_score=5.0)  # most confident, but not a fetal plane
    t.add(_frame(1), fair, fair, 0.01, ood_score=0.5)
    t.add(_frame(2), sure, sure, 0.01, ood_score=float("nan"))  # no score is no acceptance
    assert t.best["a"][1].index == 1
    assert [r["state"] for r in t.rows] == ["out_of_distribution", "plane", "out_of_distribution"]
    assert t.rejected == 2 and t.rows[0]["ood_score"] == 5.0


def test_without_a_gate_the_most_confident_frame_is_best() -> None:
    t = _Tracker(("a", "b"), abstain_threshold=0.5)
    sure, fair = np.array([0.99, 0.01]), np.array([0.7, 0.3])
    t.add(_frame(0), sure, sure, 0.01)
    t.add(_frame(1), fair, fair, 0.01)
    assert t.best["a"][1].index == 0 and t.rows[0]["state"] == "plane" and t.rows[0]["ood_score"] == ""


def test_stream_applies_the_models_gate_as_the_predictor_does(onnx_model: Path, tmp_path: Path) -> None:
    """`stream` end to end: each frame's OOD score and state in frames.csv are the Predictor's for
    that frame, with the gate's threshold moved to the middle of the clip's scores so that both
    verdicts occur; a rejected frame is never a best frame."""
    pytest.importorskip("av")
    from fetalplanes.deploy.stream import StreamConfig, open_frames, run_stream, write_phantom_video
    from fetalplanes.runtime import load_predictor
    from fetalplanes.runtime.artifact import read_spec, update_spec

    video = write_phantom_video(tmp_path / "clip.mp4", n_frames=12, size=(96, 80))
    images = [f.image for f in open_frames(video)[0]]
    model = tmp_path / "model.onnx"
    shutil.copy(onnx_model, model)
    spec = read_spec(model)
    assert spec.has_ood_gate
    scores = [r.prediction.ood_score for r in load_predictor(model).predict(images)]
    update_spec(model, ood={**spec.ood, "threshold": float(np.median(scores))})
    want = [r.prediction for r in load_predictor(model).predict(images)]
    assert {p.state == "out_of_distribution" for p in want} == {True, False}  # both verdicts occur

    summary = run_stream(StreamConfig(video, model, tmp_path / "out", smooth="none"))
    with open(tmp_path / "out" / "frames.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["state"] for r in rows] == [p.state for p in want]
    np.testing.assert_allclose([float(r["ood_score"]) for r in rows], [p.ood_score for p in want], rtol=1e-4, atol=1e-5)
    assert summary["frames_out_of_distribution"] == sum(p.ood for p in want)
    rejected = {i for i, p in enumerate(want) if p.ood}
    assert all(best["frame"] not in rejected for best in summary["best_frames"].values())
