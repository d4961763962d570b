"""Every metric of ``evaluation.metrics`` against scikit-learn / scipy, on random and edge inputs
(absent classes, one class, ties, n = 1, one patient), plus the issue's worked cases."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support,
                             top_k_accuracy_score)

from fetalplanes.core.errors import DataError, UsageError, UserError
from fetalplanes.core.postprocess import top1
from fetalplanes.evaluation import metrics as M

# Under mutation testing (make mutate sets FP_HYPOTHESIS_EXAMPLES), where each mutant reruns these
# tests: fewer examples, and fixed ones (derandomize), so the mutation score is reproducible.
SETTINGS = settings(max_examples=int(os.environ.get("FP_HYPOTHESIS_EXAMPLES", "80")), deadline=None,
                    derandomize="FP_HYPOTHESIS_EXAMPLES" in os.environ,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def labelled(draw, min_n: int = 1, max_n: int = 30, min_c: int = 3, max_c: int = 7):
    """(y, probs, C): labels that may miss classes, probabilities that may tie (integer grid)."""
    c = draw(st.integers(min_c, max_c))
    n = draw(st.integers(min_n, max_n))
    n_used = draw(st.integers(1, c))  # classes that may appear in y: absent classes are common
    y = np.array(draw(st.lists(st.integers(0, n_used - 1), min_size=n, max_size=n)), dtype=int)
    if draw(st.booleans()):  # coarse grid: many ties
        raw = np.array(draw(st.lists(st.integers(1, 4), min_size=n * c, max_size=n * c)), dtype=float)
    else:
        raw = np.array(draw(st.lists(st.floats(0.01, 1.0), min_size=n * c, max_size=n * c)), dtype=float)
    raw = raw.reshape(n, c)
    return y, raw / raw.sum(axis=1, keepdims=True), c


@SETTINGS
@given(labelled(), st.integers(1, 4))
def test_topk_equals_sklearn_ties_included(case, k: int) -> None:
    y, probs, c = case
    ref = top_k_accuracy_score(y, probs, k=k, labels=list(range(c))) if k < c else 1.0
    assert M.topk_accuracy(y, probs, k) == pytest.approx(ref)


def test_topk_tie_from_the_issue() -> None:
    """[0.4, 0.3, 0.3], true class 2: scikit-learn counts a top-2 hit, and so do we."""
    y, p = np.array([2]), np.array([[0.4, 0.3, 0.3]])
    assert top_k_accuracy_score(y, p, k=2, labels=[0, 1, 2]) == 1.0
    assert M.topk_accuracy(y, p, 2) == 1.0
    assert M.topk_accuracy(y, p, 1) == 0.0
    assert M.topk_accuracy(np.zeros(0, int), np.zeros((0, 3)), 1) is None


@SETTINGS
@given(labelled())
def test_point_metrics_equal_sklearn(case) -> None:
    y, probs, c = case
    names = [f"c{i}" for i in range(c)]
    m = M.point_metrics(y, probs, names)
    pred = top1(probs)
    present = np.unique(y)
    assert m["n"] == len(y) and m["n_classes_present"] == len(present)
    assert m["top1"] == pytest.approx(accuracy_score(y, pred))
    assert m["top2"] == pytest.approx(top_k_accuracy_score(y, probs, k=2, labels=list(range(c))))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, labels=present, average="macro"))
    assert m["f1_weighted"] == pytest.approx(f1_score(y, pred, labels=present, average="weighted"))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(c)), zero_division=np.nan)
    for i, name in enumerate(names):
        got = m["per_class"][name]
        for key, ref in (("precision", p[i]), ("recall", r[i]), ("f1", f[i])):
            assert (got[key] is None) == bool(np.isnan(ref)), (name, key)
            if got[key] is not None:
                assert got[key] == pytest.approx(ref)
        assert got["support"] == s[i]
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=list(range(c))).tolist()
    assert m["macro_over"] == "classes present in y_true"


@SETTINGS
@given(labelled(max_n=60))
def test_fast_macro_f1_equals_sklearn(case) -> None:
    """The confusion-matrix macro-F1 the bootstrap uses is scikit-learn's over present classes."""
    y, probs, c = case
    pred = top1(probs)
    assert M.macro_f1(y, pred, c) == pytest.approx(f1_score(y, pred, labels=np.unique(y), average="macro"))


def test_precision_and_recall_are_not_swapped() -> None:
    # class 0: 3 true, predicted 4 times (3 right) -> precision 3/4, recall 1
    y = np.array([0, 0, 0, 1, 1])
    probs = np.eye(3)[[0, 0, 0, 0, 1]]
    pc = M.point_metrics(y, probs, ["a", "b", "c"])["per_class"]
    assert pc["a"]["precision"] == pytest.approx(0.75) and pc["a"]["recall"] == pytest.approx(1.0)
    assert pc["b"]["precision"] == pytest.approx(1.0) and pc["b"]["recall"] == pytest.approx(0.5)
    assert pc["c"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    # class c neither true nor predicted: its row and column are still there, all zero
    assert M.point_metrics(y, probs, ["a", "b", "c"])["confusion_matrix"] == [[3, 0, 0], [1, 1, 0], [0, 0, 0]]


def test_macro_is_not_micro() -> None:
    y = np.array([0] * 8 + [1, 2])
    probs = np.eye(3)[[0] * 8 + [0, 2]]  # class 1 always wrong
    m = M.point_metrics(y, probs, ["a", "b", "c"])
    micro = f1_score(y, top1(probs), average="micro")
    assert micro == pytest.approx(0.9)
    assert m["f1_macro"] == pytest.approx(f1_score(y, top1(probs), average="macro")) != pytest.approx(micro)


def test_one_correct_image_and_one_class_subgroup_score_one() -> None:
    """The issue's cases: one correct image gave macro-F1 0.167, 'Other | n=6' all right gave 0.500."""
    names = [f"c{i}" for i in range(6)]
    m = M.point_metrics(np.array([3]), np.eye(6)[[3]], names)
    assert m["top1"] == 1.0 and m["f1_macro"] == 1.0 and m["per_class"]["c0"]["precision"] is None
    y = np.array([5] * 6 + [0, 1, 2, 3])
    probs = np.eye(6)[[5] * 6 + [1, 1, 2, 2]]
    b = M.breakdown(y, probs, ["Other"] * 6 + ["E6"] * 4, names)
    assert b["Other"] == {"n": 6, "top1": 1.0, "f1_macro": 1.0, "n_classes_present": 1}
    assert b["E6"]["top1"] == pytest.approx(0.5)


@SETTINGS
@given(labelled(max_n=40), st.data())
def test_breakdown_is_computed_on_each_subgroup(case, data) -> None:
    y, probs, c = case
    keys = data.draw(st.lists(st.sampled_from(["A", "B", "C"]), min_size=len(y), max_size=len(y)))
    b = M.breakdown(y, probs, keys, [str(i) for i in range(c)])
    k = np.array(keys)
    assert sorted(b) == sorted(set(keys))
    for value, row in b.items():
        m = k == value
        assert row["n"] == m.sum()
        assert row["top1"] == pytest.approx(accuracy_score(y[m], top1(probs[m])))
        assert row["f1_macro"] == pytest.approx(f1_score(y[m], top1(probs[m]), labels=np.unique(y[m]), average="macro"))


def test_undefined_values_are_none_and_print_na() -> None:
    m = M.point_metrics(np.zeros(0, int), np.zeros((0, 3)), ["a", "b", "c"])
    assert m["top1"] is m["f1_macro"] is m["f1_weighted"] is None
    assert M.fmt(None) == M.fmt(float("nan")) == "n/a" and M.fmt(0.5, 2) == "0.50"
    assert M.fmt(1 / 3) == "0.3333"  # four decimals by default
    assert m["confusion_matrix"] == [[0] * 3] * 3 and m["n_classes_present"] == 0


def test_undefined_macro_f1_raises_no_numpy_warning() -> None:
    """0 / 0 (no class with support) is None, silently: no RuntimeWarning in the user's output."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.macro_f1(np.zeros(0, int), np.zeros(0, int), 3) is None
        stack = M._macro_f1_from_cm(np.stack([np.zeros((3, 3)), np.eye(3)]))
    assert np.isnan(stack[0]) and stack[1] == 1.0


def test_breakdown_names_missing_values() -> None:
    y = np.array([0, 1, 1])
    b = M.breakdown(y, np.eye(2)[[0, 1, 0]], [None, "A", None], ["a", "b"])
    assert sorted(b) == ["(missing)", "A"] and b["(missing)"]["n"] == 2 and b["(missing)"]["top1"] == 0.5


# ---------------------------------------------------------------- bootstrap
def _clustered(n_patients: int, per: int, seed: int = 0, c: int = 3):
    """Patients whose images are all right or all wrong (maximal within-patient correlation)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n_patients * per)
    right = np.repeat(rng.random(n_patients) < 0.7, per)
    pred = np.where(right, y, (y + 1) % c)
    return y, np.eye(c)[pred] * 0.8 + 0.2 / c, [f"p{i // per}" for i in range(n_patients * per)]


def test_patient_bootstrap_resamples_patients_not_images() -> None:
    y, probs, pats = _clustered(20, 10)
    by_patient = M.bootstrap_ci(y, probs, pats, 3, n_boot=400)
    by_image = M.bootstrap_ci(y, probs, pats, 3, n_boot=400, unit="image")
    assert (by_patient["unit"], by_patient["n_units"]) == ("patient", 20)
    assert (by_image["unit"], by_image["n_units"]) == ("image", 200)
    # all-or-nothing patients: patient-level SE ~ sqrt(p(1-p)/20) vs image-level sqrt(p(1-p)/200)
    assert by_patient["top1"]["se"] > 2 * by_image["top1"]["se"]
    p = (top1(probs) == y).mean()
    assert by_patient["top1"]["se"] == pytest.approx(np.sqrt(p * (1 - p) / 20), rel=0.25)
    assert by_patient["top1"]["low"] < p < by_patient["top1"]["high"]


def test_bootstrap_percentile_matches_a_naive_cluster_loop() -> None:
    y, probs, pats = _clustered(15, 4, seed=3)
    ours = M.bootstrap_ci(y, probs, pats, 3, n_boot=2000, seed=1)
    rng = np.random.default_rng(7)
    groups = np.array(pats)
    ids = np.unique(groups)
    pred = top1(probs)
    acc, f1 = [], []
    for _ in range(2000):  # macro_f1 is checked against scikit-learn above, and is 50x faster here
        rows = np.concatenate([np.nonzero(groups == g)[0] for g in rng.choice(ids, len(ids))])
        acc.append(np.mean(y[rows] == pred[rows]))
        f1.append(M.macro_f1(y[rows], pred[rows], 3))
    for key, ref in (("top1", acc), ("f1_macro", f1)):
        lo, hi = np.percentile(ref, [2.5, 97.5])
        assert ours[key]["low"] == pytest.approx(lo, abs=0.04) and ours[key]["high"] == pytest.approx(hi, abs=0.04)


def test_resample_macro_f1_not_biased_low_by_lost_classes() -> None:
    """A perfect classifier: every resample has macro-F1 1, even when it loses a rare class."""
    y = np.array([0] * 40 + [1] * 40 + [2])
    pats = [f"p{i}" for i in range(len(y))]
    ci = M.bootstrap_ci(y, np.eye(3)[y], pats, 3, n_boot=300)
    assert ci["f1_macro"]["low"] == ci["f1_macro"]["high"] == 1.0


def test_missing_patient_id_is_an_error_unless_image_level_is_asked() -> None:
    y, probs, pats = _clustered(12, 2)
    pats[5] = None
    with pytest.raises(DataError, match="1 of 24 images have no patient id"):
        M.bootstrap_ci(y, probs, pats, 3, n_boot=50)
    with pytest.raises(DataError, match="unit='image'"):
        M.evaluate_arrays(y, probs, ["a", "b", "c"], None, n_boot=50)
    assert M.bootstrap_ci(y, probs, pats, 3, n_boot=50, unit="image")["unit"] == "image"
    with pytest.raises(UsageError, match=r"\['patient', 'image'\]"):
        M.bootstrap_ci(y, probs, pats, 3, unit="patients")
    with pytest.raises(UsageError, match="BCa"):
        M.bootstrap_ci(y, probs, pats, 3, method="bca")


@pytest.mark.parametrize("n_patients", [1, 2, 9])
def test_fewer_than_ten_patients_gives_no_interval(n_patients: int) -> None:
    y, probs, pats = _clustered(n_patients, 3)
    ci = M.bootstrap_ci(y, probs, pats, 3, n_boot=100)
    assert ci["top1"] is None and ci["f1_macro"] is None and ci["status"] == "too few units"
    assert ci["n_units"] == n_patients and ci["n_boot"] == 100 and ci["unit"] == "patient"
    assert f"only {n_patients} patient(s)" in ci["note"]
    assert M.bootstrap_ci(*_clustered(10, 3), 3, n_boot=100)["status"] == "ok"


def test_bca_is_available_and_brackets_the_estimate() -> None:
    y, probs, pats = _clustered(30, 3, seed=5)
    ci = M.bootstrap_ci(y, probs, pats, 3, n_boot=500, method="BCa")
    p = (top1(probs) == y).mean()
    assert ci["method"] == "BCa" and ci["top1"]["low"] <= p <= ci["top1"]["high"]
    perfect = M.bootstrap_ci(y, np.eye(3)[y], pats, 3, n_boot=200, method="BCa")
    assert perfect["status"] == "degenerate" and perfect["top1"] is None


def test_evaluate_arrays_checks_its_inputs() -> None:
    names = ["a", "b", "c"]
    with pytest.raises(DataError, match="2 labels but 3 predictions"):
        M.evaluate_arrays([0, 1], np.eye(3), names, ["p"] * 2)
    with pytest.raises(DataError, match="expected \\(N, 3\\)"):
        M.evaluate_arrays([0, 1], np.eye(2), names, ["p"] * 2)
    with pytest.raises(DataError, match="label index 3 outside 0..2"):
        M.evaluate_arrays([0, 3, 1], np.eye(3), names, ["p"] * 3)
    assert issubclass(DataError, ValueError) and issubclass(DataError, UserError)
    m = M.evaluate_arrays([0, 1, 2], np.eye(3), names, ["p1", "p1", "p2"], {"m": ["x", "y", "x"]}, n_boot=20)
    assert m["ci95"]["n_units"] == 2 and m["breakdown"]["m"]["x"]["n"] == 2


def test_evaluate_arrays_passes_its_settings_to_the_bootstrap() -> None:
    y, probs, pats = _clustered(12, 3)
    names = ["a", "b", "c"]
    m = M.evaluate_arrays(list(y), probs.tolist(), names, pats, n_boot=150, seed=4, unit="image", method="BCa")
    assert m["ci95"] == M.bootstrap_ci(y, probs, pats, 3, 150, 4, unit="image", method="BCa")
    d = M.evaluate_arrays(y, probs, names, pats)["ci95"]
    assert (d["n_boot"], d["seed"], d["unit"], d["method"], d["level"]) == (1000, 0, "patient", "percentile", 0.95)
    assert d == M.bootstrap_ci(y, probs, pats, 3)


def test_batched_macro_f1_and_patient_id_checks() -> None:
    """Survivors of the mutation run: the bootstrap's stacked (B, C, C) matrices, empty and
    mismatched patient ids, the reported minimum number of units."""
    rng = np.random.default_rng(0)
    cms = rng.integers(0, 5, (4, 3, 3)) * (rng.random((4, 3, 3)) < 0.7)
    cms[1, 0, :] = 0  # class 0 absent in one matrix
    assert np.allclose(M._macro_f1_from_cm(cms), [M._macro_f1_from_cm(c) for c in cms])
    y, probs, pats = _clustered(12, 2)
    with pytest.raises(DataError, match="23 patient ids for 24 images"):
        M.bootstrap_ci(y, probs, pats[:-1], 3)
    pats[3] = " "
    with pytest.raises(DataError, match="1 of 24 images have no patient id"):
        M.bootstrap_ci(y, probs, pats, 3)
    assert M.bootstrap_ci(*_clustered(12, 2), 3, n_boot=20)["min_units"] == M.MIN_CLUSTERS == 10


def _one_right_one_wrong(n_patients: int = 15, seed: int = 0):
    """Each patient: one image right, one wrong (random classes): top-1 is 0.5 in EVERY
    resample, while macro-F1 varies with the classes drawn."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 3, n_patients), rng.integers(0, 3, n_patients)
    y = np.ravel(np.column_stack([a, b]))
    pred = np.ravel(np.column_stack([a, (b + 1) % 3]))
    return y, np.eye(3)[pred], [f"p{i // 2}" for i in range(2 * n_patients)]


def test_bootstrap_status_needs_both_intervals_and_notes_only_failures() -> None:
    y, probs, pats = _one_right_one_wrong()
    bca = M.bootstrap_ci(y, probs, pats, 3, n_boot=300, method="BCa")
    assert bca["top1"] is None and bca["f1_macro"]["low"] < bca["f1_macro"]["high"]
    assert bca["status"] == "degenerate" and "every resample gave the same value" in bca["note"]
    pct = M.bootstrap_ci(y, probs, pats, 3, n_boot=300)
    assert pct["status"] == "ok" and "note" not in pct and pct["top1"]["low"] == pct["top1"]["high"] == 0.5


def test_bootstrap_level_and_number_of_resamples_are_used() -> None:
    y, probs, pats = _clustered(20, 3, seed=2)
    wide = M.bootstrap_ci(y, probs, pats, 3, n_boot=400, seed=3)
    narrow = M.bootstrap_ci(y, probs, pats, 3, n_boot=400, seed=3, alpha=0.4)
    assert narrow["level"] == pytest.approx(0.6)
    for key in ("top1", "f1_macro"):  # the same resamples: the 60 % interval lies inside the 95 % one
        assert wide[key]["low"] < narrow[key]["low"] <= narrow[key]["high"] < wide[key]["high"]
    one = M.bootstrap_ci(y, probs, pats, 3, n_boot=1)  # one resample: both ends are its value
    assert one["top1"]["low"] == one["top1"]["high"] and one["top1"]["se"] is None
