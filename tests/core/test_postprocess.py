"""Softmax in float64, the one tie rule of top-k (scikit-learn's) and the abstain flag."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetalplanes.core.errors import DataError, UsageError
from fetalplanes.core.postprocess import decide, softmax, top1, topk_indices

# Under make mutate (FP_HYPOTHESIS_EXAMPLES set) the examples are fixed (derandomize), so every
# mutant meets the same inputs and the mutation score is reproducible.
SETTINGS = settings(max_examples=int(os.environ.get("FP_HYPOTHESIS_EXAMPLES", "80")), deadline=None,
                    derandomize="FP_HYPOTHESIS_EXAMPLES" in os.environ)


@SETTINGS
@given(st.integers(1, 8).flatmap(lambda n: st.lists(st.lists(st.floats(-50, 50), min_size=4, max_size=4),
                                                    min_size=n, max_size=n)), st.floats(0.05, 20))
def test_softmax_is_float64_rows_sum_to_one_and_matches_scipy(rows, t: float) -> None:
    from scipy.special import softmax as ref

    logits = np.array(rows)
    p = softmax(logits, t)
    assert p.dtype == np.float64 and p.shape == logits.shape
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert np.allclose(p, ref(logits / t, axis=1), rtol=1e-12, atol=1e-300)


@SETTINGS
@given(st.integers(1, 10).flatmap(lambda n: st.lists(st.lists(st.integers(0, 3), min_size=5, max_size=5),
                                                     min_size=n, max_size=n)), st.integers(1, 6))
def test_topk_order_is_sklearns(rows, k: int) -> None:
    """scikit-learn's ranking: ``argsort(mergesort)[:, ::-1]``: ties put the higher index first."""
    scores = np.array(rows, dtype=float)
    ref = np.argsort(scores, axis=1, kind="mergesort")[:, ::-1][:, : min(k, 5)]
    assert np.array_equal(topk_indices(scores, k), ref)
    assert np.array_equal(top1(scores), ref[:, 0])


def test_ties_and_k_in_decide() -> None:
    p = decide(np.array([[0.4, 0.3, 0.3]]), ["a", "b", "c"], k=2)[0]
    assert p.label == "a" and [c for c, _ in p.topk] == ["a", "c"]  # the tie 0.3/0.3 ranks c first
    assert len(decide(np.array([[0.2, 0.5, 0.3]]), ["a", "b", "c"], k=3)[0].topk) == 3
    assert decide(np.array([[0.5, 0.5]]), ["a", "b"], k=1)[0].label == "b"
    assert len(decide(np.array([[0.2, 0.8]]), ["a", "b"], k=9)[0].topk) == 2


def test_abstain_is_strictly_below_the_threshold() -> None:
    probs = np.array([[0.6, 0.4], [0.59, 0.41]])
    flags = [p.abstain for p in decide(probs, ["a", "b"], abstain_threshold=0.6)]
    assert flags == [False, True]
    assert not any(p.abstain for p in decide(probs, ["a", "b"]))


def test_bad_inputs_raise_user_errors() -> None:
    with pytest.raises(DataError, match="3 probabilities per image but 2 class names"):
        decide(np.ones((1, 3)) / 3, ["a", "b"])
    for t in (0, -1, float("nan"), float("inf")):
        with pytest.raises(UsageError):
            softmax(np.zeros((1, 2)), t)


def test_prediction_fields() -> None:
    p = decide(np.array([[0.1, 0.7, 0.2]]), ["a", "b", "c"])[0]
    assert p.to_dict() == {"label": "b", "nearest_plane": None, "confidence": 0.7,
                           "topk": [{"label": "b", "probability": 0.7}, {"label": "c", "probability": 0.2}],
                           "probabilities": {"a": 0.1, "b": 0.7, "c": 0.2}, "abstain": False, "state": "plane",
                           "ood": {"gate": False, "note": "no OOD gate in this model file"}}
    assert isinstance(p.confidence, float) and isinstance(p.probabilities["a"], float)


def test_three_states_ood_first_then_abstain_then_plane() -> None:
    probs = np.array([[0.1, 0.7, 0.2], [0.4, 0.3, 0.3], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1]])
    got = decide(probs, ["a", "b", "c"], abstain_threshold=0.5, ood_scores=np.array([1.0, 1.0, 2.0, np.nan]),
                 ood_threshold=1.0)
    assert [p.state for p in got] == ["plane", "abstain", "out_of_distribution", "out_of_distribution"]
    assert got[0].ood_score == 1.0 and not got[0].ood  # exactly at the threshold: accepted
    assert got[2].to_dict()["ood"] == {"gate": True, "out_of_distribution": True, "score": 2.0, "threshold": 1.0}
    assert got[2].verdict().startswith("not a fetal plane (OOD score 2 > threshold 1)")
    assert got[1].verdict().startswith("abstain") and got[0].verdict() == "b 0.700"
    with pytest.raises(DataError, match="3 OOD scores for 4 images"):
        decide(probs, ["a", "b", "c"], ood_scores=np.ones(3), ood_threshold=1.0)


def test_an_out_of_distribution_answer_reports_no_plane_only_the_nearest() -> None:
    """Finding: a rejected input's answer still carried ``label``, which reads like a classification."""
    probs = np.array([[0.1, 0.7, 0.2], [0.4, 0.3, 0.3]])
    ood, abstain = decide(probs, ["a", "b", "c"], abstain_threshold=0.5, ood_scores=np.array([2.0, 0.0]),
                          ood_threshold=1.0)
    assert ood.state == "out_of_distribution" and ood.plane is None and ood.nearest_plane == "b"
    assert ood.to_dict()["label"] is None and ood.to_dict()["nearest_plane"] == "b"
    # an abstention keeps its top class as a suggestion (docs/ood.md), and has no nearest_plane
    assert abstain.state == "abstain" and abstain.to_dict()["label"] == "a" and abstain.nearest_plane is None


def test_softmax_default_temperature_last_axis_and_float32_input() -> None:
    """Default T = 1; rows are the LAST axis for any (..., C) shape; float32 logits are computed
    in float64 (a float32 computation would be off by ~1e-7)."""
    from scipy.special import softmax as ref

    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (2, 3, 4))
    assert np.allclose(softmax(x), ref(x, axis=-1), rtol=1e-13, atol=0)
    assert np.allclose(softmax(x[0, 0]), ref(x[0, 0]), rtol=1e-13, atol=0)
    x32 = rng.normal(0, 3, (6, 5)).astype(np.float32)
    p = softmax(x32, 0.3)
    assert p.dtype == np.float64
    assert np.allclose(p, ref(x32.astype(np.float64) / 0.3, axis=1), rtol=1e-13, atol=0)
    # numerically stable: each row shifted by its own maximum before exp (no overflow at 1000 / 0.05)
    assert np.array_equal(softmax(np.array([[1000.0, 0.0], [0.0, 1000.0]]), 0.05), [[1.0, 0.0], [0.0, 1.0]])


def test_every_product_path_breaks_ties_with_the_one_rule() -> None:
    """stream, Grad-CAM's target, occlusion, the int8 gate and the export parity check pick the
    top class through core.postprocess.top1 (ties: the higher index), never a bare argmax (which
    picks the lower index and would disagree with predict on a tie)."""
    import ast
    from pathlib import Path

    import fetalplanes

    root = Path(fetalplanes.__file__).parent
    for rel in ("deploy/stream.py", "deploy/quantize.py", "deploy/export.py", "explain/cam.py", "explain/occlusion.py"):
        tree = ast.parse((root / rel).read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                 and n.func.attr == "argmax"]
        assert not calls, f"{rel}: argmax at line(s) {[c.lineno for c in calls]}"
    from fetalplanes.core.postprocess import top1

    assert int(top1(np.array([0.4, 0.2, 0.4]))[0]) == 2  # the rule itself: the higher index wins a tie
