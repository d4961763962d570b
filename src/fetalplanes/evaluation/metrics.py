"""Classification metrics with patient-level bootstrap confidence intervals (numpy + sklearn).

Intervals resample PATIENTS (cluster bootstrap) when patient ids are known, because images of
one patient are correlated; resampling images would give intervals that are too narrow.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support


def topk_accuracy(y: np.ndarray, probs: np.ndarray, k: int) -> float:
    if len(y) == 0:
        return float("nan")
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == y[:, None], axis=1)))


def _f1(y: np.ndarray, pred: np.ndarray, n: int, average: str) -> float:
    return float(f1_score(y, pred, labels=list(range(n)), average=average, zero_division=0))


def point_metrics(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    n = len(class_names)
    pred = probs.argmax(axis=1)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(n)), zero_division=0)
    return {
        "n": int(len(y)),
        "top1": topk_accuracy(y, probs, 1),
        "top2": topk_accuracy(y, probs, 2),
        "f1_macro": _f1(y, pred, n, "macro"),
        "f1_weighted": _f1(y, pred, n, "weighted"),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=list(range(n))).tolist(),
    }


def bootstrap_ci(
    y: np.ndarray,
    probs: np.ndarray,
    groups: Sequence[str] | None,
    n_classes: int,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict[str, float]]:
    """Percentile intervals of top1 and f1_macro, resampling patients (or images)."""
    rng = np.random.default_rng(seed)
    if groups is None or any(g is None for g in groups):
        clusters = [np.array([i]) for i in range(len(y))]
        unit = "image"
    else:
        idx: dict[str, list[int]] = defaultdict(list)
        for i, g in enumerate(groups):
            idx[str(g)].append(i)
        clusters = [np.array(v) for v in idx.values()]
        unit = "patient"
    pred = probs.argmax(axis=1)
    top1, f1 = [], []
    for _ in range(n_boot):
        pick = rng.integers(0, len(clusters), len(clusters))
        rows = np.concatenate([clusters[j] for j in pick])
        top1.append(float(np.mean(pred[rows] == y[rows])))
        f1.append(_f1(y[rows], pred[rows], n_classes, "macro"))
    lo, hi = 100 * alpha / 2, 100 * (1 - alpha / 2)
    return {
        "top1": {"low": float(np.percentile(top1, lo)), "high": float(np.percentile(top1, hi))},
        "f1_macro": {"low": float(np.percentile(f1, lo)), "high": float(np.percentile(f1, hi))},
        "level": 1 - alpha,
        "n_boot": n_boot,
        "unit": unit,
        "n_units": len(clusters),
    }


def breakdown(y: np.ndarray, probs: np.ndarray, keys: Sequence[str], class_names: Sequence[str]) -> dict[str, Any]:
    """top1 / f1_macro / n per value of a metadata column (e.g. US_Machine)."""
    out = {}
    keys_arr = np.asarray(keys)
    for value in sorted(set(keys)):
        m = keys_arr == value
        pred = probs[m].argmax(axis=1)
        out[value] = {
            "n": int(m.sum()),
            "top1": topk_accuracy(y[m], probs[m], 1),
            "f1_macro": _f1(y[m], pred, len(class_names), "macro"),
        }
    return out


def evaluate_arrays(
    y: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    patients: Sequence[str | None] | None = None,
    meta: dict[str, Sequence[str]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics of one split: point values, 95 % bootstrap CIs and per-column breakdowns."""
    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    if len(y) != len(probs):
        raise ValueError(f"{len(y)} labels but {len(probs)} predictions")
    metrics = point_metrics(y, probs, class_names)
    metrics["ci95"] = bootstrap_ci(y, probs, patients, len(class_names), n_boot, seed)
    metrics["breakdown"] = {col: breakdown(y, probs, vals, class_names) for col, vals in (meta or {}).items()}
    return metrics
