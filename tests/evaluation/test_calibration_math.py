"""Calibration math against torchmetrics / by definition: ECE bins (edges, confidence 1), the
abstain threshold with ties, and temperature never changing top-1 / top-2."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fetalplanes.core.errors import DataError, UsageError
from fetalplanes.core.postprocess import softmax, topk_indices
from fetalplanes.evaluation import calibration as cal

SETTINGS = settings(max_examples=int(os.environ.get("FP_HYPOTHESIS_EXAMPLES", "80")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _torchmetrics_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """torchmetrics' ``multiclass_calibration_error(norm='l1')`` (the functional form of
    ``MulticlassCalibrationError``); it casts the confidences to float32."""
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    return float(multiclass_calibration_error(torch.tensor(probs, dtype=torch.float64), torch.tensor(labels),
                                              num_classes=probs.shape[1], n_bins=n_bins, norm="l1"))


@st.composite
def probs_and_labels(draw, max_n: int = 40):
    c = draw(st.integers(2, 6))
    n = draw(st.integers(1, max_n))
    logits = np.array(draw(st.lists(st.floats(-8, 8), min_size=n * c, max_size=n * c))).reshape(n, c)
    labels = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    probs = softmax(logits)
    top = np.sort(probs, axis=1)
    assume(np.all(top[:, -1] > top[:, -2]))  # ties at the top: documented difference (torch.max vs top1)
    return probs, labels


def _near_an_edge(conf: np.ndarray, n_bins: int) -> bool:
    """Within float32 rounding of a bin edge, where torchmetrics' float32 cast may move a case."""
    return bool(np.any(np.abs(conf[:, None] - np.arange(n_bins + 1) / n_bins) < 1e-6))


@SETTINGS
@given(probs_and_labels(), st.sampled_from([5, 10, 15]))
def test_ece_equals_torchmetrics(case, n_bins: int) -> None:
    probs, labels = case
    assume(not _near_an_edge(probs.max(1), n_bins))
    assert cal.ece(probs, labels, n_bins) == pytest.approx(_torchmetrics_ece(probs, labels, n_bins), abs=1e-6)


def test_bin_edges_are_left_closed_and_confidence_one_has_its_own_bin() -> None:
    # Edges k/8 are exact in float32 and float64, so torchmetrics bins these exactly like us.
    conf = np.array([0.375, 0.625, 0.75, 0.875, 1.0, 0.6])
    assert cal.bin_index(conf, 8).tolist() == [3, 5, 6, 7, 8, 4]
    probs = np.stack([conf, (1 - conf) / 2, (1 - conf) / 2], axis=1)
    labels = np.array([1, 0, 0, 1, 0, 0])
    assert cal.ece(probs, labels, 8) == pytest.approx(_torchmetrics_ece(probs, labels, 8), abs=1e-6)
    # confidence 1 kept apart: merged with the 0.6 bin the gap would be different
    b = cal.reliability_bins(np.array([[1.0, 0.0], [0.95, 0.05]]), np.array([0, 1]), 10)
    assert b["count"][-1] == 2 and len(b["count"]) == 10
    assert cal.ece(np.array([[1.0, 0.0], [0.95, 0.05]]), np.array([0, 1]), 10) == pytest.approx((0 + 0.95) / 2)
    assert np.isnan(cal.ece(np.zeros((0, 3)), np.zeros(0, int)))


@SETTINGS
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(
    st.lists(st.lists(st.floats(-15, 15).map(lambda v: round(v, 4)), min_size=6, max_size=6), min_size=n, max_size=n),
    st.floats(cal.T_BOUNDS[0], cal.T_BOUNDS[1]))))
def test_temperature_never_changes_top1_or_top2(case) -> None:
    """The docs' promise, within the stated range (logits spanning < 35 at T >= 0.05). Tied
    logits stay tied at any T, so the tie rule orders them the same way. Logits are on a 1e-4
    grid: two logits a few ulp apart (hypothesis found 0 and -2.2e-16) can round to the same
    probability at one T and not at another: a float64 resolution limit, stated in the docs."""
    rows, t = case
    logits = np.array(rows)
    assert np.array_equal(topk_indices(softmax(logits, t), 2), topk_indices(softmax(logits, 1.0), 2))
    assert softmax(logits, t).dtype == np.float64


def test_float32_softmax_would_have_broken_the_promise() -> None:
    """Why float64: at T = 0.05 float32 underflows both runner-up classes to 0 and top-2 flips."""
    logits = np.array([[10.0, 2.0, 3.0]])
    z = (logits / 0.05).astype(np.float32)
    p32 = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert p32[0, 1] == p32[0, 2] == 0.0
    assert topk_indices(softmax(logits, 0.05), 2).tolist() == [[0, 2]]


def test_abstain_threshold_honours_ties() -> None:
    """Four cases tied at 0.9 (two right): keeping any of them keeps all, accuracy 0.5."""
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 4)
    labels = np.array([0, 0, 1, 1, 0, 0, 0, 0])
    r = cal.choose_abstain_threshold(probs, labels, target_accuracy=0.95, min_coverage=0.25)
    keep = probs.max(1) >= r["threshold"]
    assert r["target_reached"] is False and r["rule"] == "min_coverage"
    assert r["coverage"] == pytest.approx(keep.mean()) == 0.5 and r["accuracy_retained"] == 0.5
    ok = cal.choose_abstain_threshold(probs, labels, target_accuracy=0.75, min_coverage=0.25)
    assert ok["threshold"] == 0.0 and ok["target_reached"] is True and ok["accuracy_retained"] == 0.75
    by_cov = cal.choose_abstain_threshold(probs, labels, coverage=0.3)
    assert by_cov["coverage"] == 0.5 and by_cov["threshold"] == 0.9 and by_cov["target_reached"] is None


@SETTINGS
@given(probs_and_labels(max_n=30), st.floats(0.3, 1.0), st.floats(0.05, 1.0))
def test_abstain_threshold_by_definition(case, target: float, min_cov: float) -> None:
    probs, labels = case
    r = cal.choose_abstain_threshold(probs, labels, target_accuracy=target, min_coverage=min_cov)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    keep = conf >= r["threshold"]
    assert r["coverage"] == pytest.approx(keep.mean()) and keep.mean() >= min_cov - 1e-9
    assert r["accuracy_retained"] == pytest.approx(correct[keep].mean())
    assert r["target_reached"] == bool(correct[keep].mean() >= target)
    # no lower achievable threshold (more coverage) also reaches the target
    if r["target_reached"]:
        for t in np.unique(conf[conf < r["threshold"]]):
            assert correct[conf >= t].mean() < target


def test_bad_arguments_are_user_errors() -> None:
    with pytest.raises(UsageError, match=r"\(0, 1\]"):
        cal.choose_abstain_threshold(np.eye(3), np.arange(3), coverage=1.5)
    with pytest.raises(DataError, match="empty validation split"):
        cal.fit_temperature(np.zeros((0, 3)), np.zeros(0, int))
    with pytest.raises(UsageError, match="temperature"):
        softmax(np.zeros((1, 3)), 0.0)
