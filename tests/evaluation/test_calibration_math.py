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

# Under make mutate (FP_HYPOTHESIS_EXAMPLES set) the examples are fixed (derandomize), so every
# mutant meets the same inputs and the mutation score is reproducible.
SETTINGS = settings(max_examples=int(os.environ.get("FP_HYPOTHESIS_EXAMPLES", "80")), deadline=None,
                    derandomize="FP_HYPOTHESIS_EXAMPLES" in os.environ,
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


# ------------------------------------------------ survivors of the mutation run (make mutate)
def _log_softmax_ref(logits: np.ndarray, t: float = 1.0) -> np.ndarray:
    from scipy.special import log_softmax

    return log_softmax(np.asarray(logits, dtype=np.float64) / t, axis=1)


def test_nll_is_the_mean_cross_entropy_in_float64() -> None:
    """NLL = mean of -log softmax(z / T)[label] (scipy's log_softmax as reference): default
    T = 1, each row shifted by its own maximum (huge and small rows together stay finite), the
    log-sum over each row alone, and float32 logits computed in float64 (module docstring)."""
    logits = np.array([[1000.0, 999.0, 0.0], [0.0, -1.0, -2.0], [3.0, 1.0, 2.0]])
    labels = np.array([1, 0, 2])
    for t in (1.0, 0.5, 3.0):
        ref = -_log_softmax_ref(logits, t)[np.arange(3), labels].mean()
        assert cal.nll(logits, labels, t) == pytest.approx(ref, rel=1e-12)
    assert cal.nll(logits, labels) == cal.nll(logits, labels, 1.0)
    l32 = np.random.default_rng(0).normal(0, 4, (20, 5)).astype(np.float32)
    y32 = np.arange(20) % 5
    ref = -_log_softmax_ref(l32, 0.7)[np.arange(20), y32].mean()
    assert cal.nll(l32, y32, 0.7) == pytest.approx(ref, rel=1e-13)


def _calibrated_design(t_true: float) -> tuple[np.ndarray, np.ndarray]:
    """Four cases at confidence softmax([T ln 3, 0] / T) = 0.75, three of them right: perfectly
    calibrated at T, so dNLL/dT = 0 there and the NLL minimum is exactly T (Guo et al. 2017)."""
    return np.array([[t_true * np.log(3.0), 0.0]] * 4), np.array([0, 0, 0, 1])


@pytest.mark.parametrize("t_true", [0.08, 1.0, 5.0, 19.0])
def test_fit_temperature_finds_the_exact_minimum_of_a_calibrated_design(t_true: float) -> None:
    logits, labels = _calibrated_design(t_true)
    t = cal.fit_temperature(logits, labels)
    assert t == pytest.approx(t_true, rel=1e-3)
    if t_true == 1.0:  # the search lands near 1, never below its NLL: T = 1 is kept exactly
        assert t == 1.0
    r = cal.calibrate_logits(logits, labels)
    assert r["temperature"] == t and r["temperature_note"] == "fitted: minimum of validation NLL"


def test_temperature_at_a_search_bound_is_flagged_and_logged(caplog) -> None:
    caplog.set_level("WARNING", logger=cal.__name__)
    # Optimum T = 50 lies beyond the upper bound 20.
    t, note = cal._temperature(*_calibrated_design(50.0))
    assert t == pytest.approx(cal.T_BOUNDS[1], rel=1e-3) and note.startswith("at the search bound")
    assert f"temperature {t:.3f} at the search bound (0.05, 20.0)" in caplog.text
    # One error whose true class ties the top logit: NLL falls all the way to the lower bound.
    t, note = cal._temperature(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), np.array([0, 1, 0]))
    assert t == pytest.approx(cal.T_BOUNDS[0], rel=1e-3) and note.startswith("at the search bound")
    caplog.clear()
    t, note = cal._temperature(np.eye(3) * 2, np.arange(3))
    assert (t, note.split(":")[0]) == (1.0, "not fitted")
    assert "no validation errors (n = 3)" in caplog.text


def test_constant_logits_keep_temperature_one() -> None:
    """Rows with equal logits carry no information about T (NLL = log C at every T). Before the
    fix the search's last probe (T = 20, 'at the search bound') was returned and stored."""
    logits, labels = np.zeros((6, 3)), np.array([0, 1, 2, 0, 1, 2])
    assert cal.fit_temperature(logits, labels) == 1.0
    assert cal.calibrate_logits(logits, labels)["temperature"] == 1.0


def test_bin_index_and_ece_at_the_low_end_and_for_one_case() -> None:
    # Confidence below 1/B (more classes than bins) falls in bin 0: k/B <= c < (k+1)/B.
    assert cal.bin_index(np.array([0.0, 0.05, 1 / 15, 0.999, 1.0]), 15).tolist() == [0, 0, 1, 14, 15]
    # One case: ECE = |correct - confidence|.
    assert cal.ece(np.array([[0.7, 0.3]]), np.array([1])) == pytest.approx(0.7)
    assert cal.ece(np.array([[0.7, 0.3]]), np.array([0])) == pytest.approx(0.3)


def _reliability_by_definition(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> dict[str, list[float]]:
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = [k / n_bins for k in range(n_bins + 1)]
    out: dict[str, list[float]] = {"edges": edges, "count": [], "confidence": [], "accuracy": []}
    for k in range(n_bins):
        # [k/B, (k+1)/B), the last bin closed (confidence 1 shown with it)
        m = (conf >= edges[k]) & ((conf < edges[k + 1]) | (k == n_bins - 1))
        out["count"].append(float(m.sum()))
        out["confidence"].append(float(conf[m].mean()) if m.any() else 0.0)
        out["accuracy"].append(float(correct[m].mean()) if m.any() else 0.0)
    return out


@pytest.mark.parametrize("n_bins", [5, 15])
def test_reliability_bins_by_definition(n_bins: int) -> None:
    # 8 classes: confidences from 0.13 (< 1/5) to 1, on bin edges (0.2, 0.4, 0.6) and between
    conf = np.array([0.13, 0.15, 0.2, 0.3, 0.35, 0.4, 0.55, 0.6, 0.9, 0.95, 0.97, 1.0])
    probs = np.column_stack([conf] + [(1 - conf) / 7] * 7)
    labels = np.array([0, 1, 0, 0, 2, 0, 0, 3, 0, 4, 0, 0])
    got = cal.reliability_bins(probs, labels, n_bins)
    ref = _reliability_by_definition(probs, labels, n_bins)
    assert set(got) == set(ref) and got["edges"] == pytest.approx(ref["edges"])
    for key in ("count", "confidence", "accuracy"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    assert 1.0 in got["count"] and got["count"][-1] >= 2  # a bin of one case; confidence 1 folded in
    below_one = cal.reliability_bins(probs[:-1], labels[:-1], n_bins)  # no case at confidence 1
    assert below_one["count"] == _reliability_by_definition(probs[:-1], labels[:-1], n_bins)["count"]


def test_abstain_threshold_edges_defaults_and_fields() -> None:
    assert cal.choose_abstain_threshold(np.zeros((0, 3)), np.zeros(0, int)) == {
        "threshold": 0.0, "rule": "empty", "target_reached": False}
    with pytest.raises(UsageError):
        cal.choose_abstain_threshold(np.eye(3), np.arange(3), coverage=0.0)
    conf = np.linspace(0.95, 0.55, 10)  # distinct confidences, most confident first
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.array([0] * 6 + [1, 0, 1, 0])  # 7th and 9th wrong
    full = cal.choose_abstain_threshold(probs, labels, coverage=1.0)
    assert full["threshold"] == 0.0 and full["coverage"] == 1.0
    # exactly the requested share kept when it is achievable; else the next count up
    assert cal.choose_abstain_threshold(probs, labels, coverage=0.5)["coverage"] == 0.5
    assert cal.choose_abstain_threshold(probs, labels, coverage=0.21)["coverage"] == pytest.approx(0.3)
    r = cal.choose_abstain_threshold(probs, labels, min_coverage=0.3)
    assert r == {"threshold": conf[5], "rule": "target", "target_accuracy": 0.95, "min_coverage": 0.3,
                 "coverage_requested": None, "target_reached": True, "coverage": 0.6,
                 "accuracy_retained": 1.0, "accuracy_all": 0.8}


def test_abstain_threshold_honours_ties_below_the_top() -> None:
    """A tie lower down (0.7 x 3, one right) cannot be split: keeping its right case keeps all three."""
    conf = np.array([0.9, 0.7, 0.7, 0.7, 0.55, 0.55])
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.array([0, 0, 1, 1, 0, 0])
    r = cal.choose_abstain_threshold(probs, labels, target_accuracy=0.95, min_coverage=0.1)
    assert (r["threshold"], r["coverage"], r["target_reached"]) == (0.9, pytest.approx(1 / 6), True)


def test_split_summary_by_definition() -> None:
    from scipy.special import softmax as sp_softmax

    rng = np.random.default_rng(4)
    logits = rng.normal(0, 2, (30, 4))
    labels = rng.integers(0, 4, 30)
    t = 1.7
    after = sp_softmax(logits / t, axis=1)
    conf, correct = after.max(1), after.argmax(1) == labels
    threshold = float(np.sort(conf)[10])  # a case exactly at the threshold is kept
    s = cal.split_summary(logits, labels, t, threshold)
    keep = conf >= threshold
    assert keep.sum() == 20
    ref_nll = lambda tt: -_log_softmax_ref(logits, tt)[np.arange(30), labels].mean()  # noqa: E731
    assert s == {
        "n": 30, "accuracy": pytest.approx(correct.mean()),
        "nll_before": pytest.approx(ref_nll(1.0)), "nll_after": pytest.approx(ref_nll(t)),
        "ece_before": pytest.approx(cal.ece(sp_softmax(logits, axis=1), labels)),
        "ece_after": pytest.approx(cal.ece(after, labels)),
        "coverage_at_threshold": pytest.approx(20 / 30), "accuracy_retained": pytest.approx(correct[keep].mean()),
    }
    assert s["ece_before"] != pytest.approx(s["ece_after"])
    none_kept = cal.split_summary(logits, labels, t, 1.01)
    assert none_kept["coverage_at_threshold"] == 0.0 and np.isnan(none_kept["accuracy_retained"])
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):  # mean of an empty NLL
        empty = cal.split_summary(np.zeros((0, 4)), np.zeros(0, int), t, 0.5)
    assert empty["n"] == 0 and all(np.isnan(v) for k, v in empty.items() if k != "n")


def test_calibrate_logits_wires_temperature_threshold_and_summaries() -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 3, (85, 4))
    labels = np.argmax(logits / 2 + rng.gumbel(size=(85, 4)), axis=1)  # drawn from softmax(logits / 2)
    val, y, test, y_test = logits[:60], labels[:60], logits[60:], labels[60:]
    t = cal.fit_temperature(val, y)
    assert t != pytest.approx(1.0, abs=0.05)
    r = cal.calibrate_logits(val, list(y), test, list(y_test), target_accuracy=0.8, min_coverage=0.3)
    rule = cal.choose_abstain_threshold(softmax(val, t), y, 0.8, None, 0.3)
    assert 0 < rule["threshold"] < 1 and rule["rule"] == "target"
    assert r == {"temperature": t, "temperature_note": "fitted: minimum of validation NLL",
                 "abstain_threshold": rule["threshold"], "abstain_rule": rule, "n_bins": 15, "fit_on": "val",
                 "val": cal.split_summary(val, y, t, rule["threshold"]),
                 "test": cal.split_summary(test, y_test, t, rule["threshold"])}
    by_cov = cal.calibrate_logits(val, y, coverage=0.6)
    assert by_cov["abstain_rule"] == cal.choose_abstain_threshold(softmax(val, t), y, coverage=0.6)
    assert "test" not in by_cov and "test" not in cal.calibrate_logits(val, y, test_logits=test)
    defaults = cal.calibrate_logits(val, y)["abstain_rule"]
    assert (defaults["target_accuracy"], defaults["min_coverage"], defaults["coverage_requested"]) == (0.95, 0.5, None)
