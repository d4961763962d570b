"""stream and the OOD gate: a frame the gate rejects is never a best frame, however confident."""

from __future__ import annotations

import numpy as np
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
