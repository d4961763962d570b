"""Classification metrics by their definitions, with patient-cluster bootstrap intervals.

Definitions (``docs/metrics.md`` states them with their sources):

- predicted class and top-k: ``core.postprocess.topk_indices`` (ties like scikit-learn's
  ``top_k_accuracy_score``); top-1 accuracy is therefore also ``accuracy_score(y, predicted)``.
- macro averages run over the classes PRESENT IN ``y_true`` (scikit-learn's
  ``f1_score(y, pred, labels=np.unique(y), average="macro")``). scikit-learn's own default
  (``labels=None``) averages over the union of true and predicted labels, and ``labels=range(C)``
  over every class: both count an absent class as F1 = 0 and bias subgroups and bootstrap
  resamples low. Weighted F1 weights by support, so absent classes never count in it.
- undefined values (0/0: precision of a class never predicted, recall / F1 of a class absent and
  never predicted, any metric of zero images) are ``None``; reports print them as ``n/a``.

Intervals resample PATIENTS (the cluster bootstrap: Davison & Hinkley 1997 sec. 3.8; Field &
Welsh 2007) because images of one patient are correlated and resampling images gives intervals
that are too narrow. A missing patient id is an error; image-level resampling must be asked for
(``unit="image"``). Below ``MIN_CLUSTERS`` units no interval is given (see ``bootstrap_ci``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from fetalplanes.core.errors import DataError, UsageError
from fetalplanes.core.postprocess import top1, topk_indices

UNITS = ("patient", "image")
METHODS = ("percentile", "BCa")
# Fewer clusters than this: the cluster bootstrap's variance estimate is unreliable (Field &
# Welsh 2007; Cameron, Gelbach & Miller 2008 show over-rejection with 5-10 clusters), so no
# interval is printed rather than a falsely narrow one.
MIN_CLUSTERS = 10
MACRO_OVER = "classes present in y_true"


def num(x: Any) -> float | None:
    """``float(x)``, or None when x is None or NaN (an undefined value)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def fmt(x: Any, digits: int = 4) -> str:
    """A metric for a table: fixed decimals, ``n/a`` for an undefined (None / NaN) value."""
    v = num(x)
    return "n/a" if v is None else f"{v:.{digits}f}"


def topk_accuracy(y: np.ndarray, probs: np.ndarray, k: int) -> float | None:
    """Share of rows whose true class is among the k most probable (None for no rows).

    ``y``: (N,) int class indices; ``probs``: (N, C). Equals
    ``sklearn.metrics.top_k_accuracy_score(y, probs, k=k, labels=range(C))``, ties included.
    """
    y = np.asarray(y)
    if len(y) == 0:
        return None
    top = topk_indices(probs, k)
    return float(np.mean(np.any(top == y[:, None], axis=1)))


def _macro_f1_from_cm(cm: np.ndarray) -> np.ndarray:
    """Macro-F1 over the classes with support, from (..., C, C) confusion matrices (rows = true).

    F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (support + predicted); NaN when no class has support.
    """
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support, predicted = cm.sum(axis=-1), cm.sum(axis=-2)
    present = support > 0
    f1 = np.divide(2.0 * tp, support + predicted, out=np.zeros(tp.shape), where=present)
    n_present = present.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_present > 0, f1.sum(axis=-1) / n_present, np.nan)


def macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float | None:
    """Macro-F1 over the classes present in ``y`` (None for no rows); see the module docstring."""
    y, pred = np.asarray(y, dtype=int), np.asarray(pred, dtype=int)
    cm = np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    return num(_macro_f1_from_cm(cm))


def point_metrics(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """n, top-1, top-2, macro / weighted F1, per-class precision / recall / F1 / support, confusion.

    ``y``: (N,) int; ``probs``: (N, C) with C = len(class_names). Undefined values are None.
    """
    y = np.asarray(y, dtype=int)
    n_cls = len(class_names)
    labels = list(range(n_cls))
    present = np.unique(y)
    pred = top1(probs) if len(y) else np.zeros(0, dtype=int)
    if len(y):
        p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=np.nan)
        f1_w = f1_score(y, pred, labels=present, average="weighted", zero_division=np.nan)
    else:
        p = r = f = np.full(n_cls, np.nan)
        s, f1_w = np.zeros(n_cls, dtype=int), np.nan
    return {
        "n": int(len(y)),
        "top1": topk_accuracy(y, probs, 1),
        "top2": topk_accuracy(y, probs, 2),
        "f1_macro": macro_f1(y, pred, n_cls),
        "f1_weighted": num(f1_w),
        "macro_over": MACRO_OVER,
        "n_classes_present": int(len(present)),
        "per_class": {
            c: {"precision": num(p[i]), "recall": num(r[i]), "f1": num(f[i]), "support": int(s[i])}
            for i, c in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist() if len(y) else
        [[0] * n_cls for _ in labels],
    }


def missing_ids(groups: Sequence[Any]) -> list[int]:
    """Indices of the images without a patient id (None or blank)."""
    return [i for i, g in enumerate(groups) if g is None or str(g).strip() == ""]


def _clusters(n: int, groups: Sequence[Any] | None, unit: str) -> list[np.ndarray]:
    """Row indices of each resampling unit; a missing patient id is an error, never a fallback."""
    if unit not in UNITS:
        raise UsageError(f"unknown bootstrap unit {unit!r}; choose one of {list(UNITS)}")
    if unit == "image":
        return [np.array([i]) for i in range(n)]
    if groups is None:
        raise DataError("no patient ids: the patient bootstrap needs one per image; give the data a patient "
                        "column, or ask for image-level intervals explicitly (unit='image', CLI --unit image)")
    if len(groups) != n:
        raise DataError(f"{len(groups)} patient ids for {n} images")
    missing = missing_ids(groups)
    if missing:
        raise DataError(f"{len(missing)} of {n} images have no patient id (first: row {missing[0]}); the patient "
                        "bootstrap needs one per image, or ask for image-level intervals (unit='image', "
                        "CLI --unit image)")
    idx: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        idx.setdefault(str(g), []).append(i)
    return [np.array(v) for v in idx.values()]


def bootstrap_ci(
    y: np.ndarray,
    probs: np.ndarray,
    groups: Sequence[Any] | None,
    n_classes: int,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    unit: str = "patient",
    method: str = "percentile",
    min_clusters: int = MIN_CLUSTERS,
) -> dict[str, Any]:
    """Cluster-bootstrap intervals of top-1 and macro-F1, resampling patients (or images).

    Each resample draws as many units as there are, with replacement (Field & Welsh 2007's
    randomized cluster bootstrap), and recomputes both metrics on the rows of the drawn units,
    macro-F1 over the classes present in that resample. ``method``: ``"percentile"`` (Efron &
    Tibshirani 1993, ch. 13; the default) or ``"BCa"`` (ch. 14; its acceleration comes from a
    leave-one-cluster-out jackknife), both computed by ``scipy.stats.bootstrap`` over the
    cluster indices. With fewer than ``min_clusters`` units the intervals are None and ``status``
    says why; ``unit``, ``n_units`` (clusters) and ``n_boot`` are always reported.

    Raises ``DataError`` for missing patient ids with ``unit="patient"``, ``UsageError`` for an
    unknown unit or method.
    """
    if method not in METHODS:
        raise UsageError(f"unknown bootstrap method {method!r}; choose one of {list(METHODS)}")
    y = np.asarray(y, dtype=int)
    clusters = _clusters(len(y), groups, unit)
    out: dict[str, Any] = {"unit": unit, "n_units": len(clusters), "n_boot": int(n_boot), "level": 1 - alpha,
                           "method": method, "seed": seed, "min_units": min_clusters}
    if len(clusters) < min_clusters:
        out.update(top1=None, f1_macro=None, status="too few units",
                   note=f"no interval: only {len(clusters)} {unit}(s), fewer than the {min_clusters} a cluster "
                        "bootstrap needs (Field & Welsh 2007)")
        return out
    pred = top1(probs)
    cell = y * n_classes + pred
    # One confusion matrix per cluster: a resample's matrix is a weighted sum of them.
    per_cluster = np.stack([np.bincount(cell[rows], minlength=n_classes ** 2) for rows in clusters]).astype(float)

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.moveaxis(np.asarray(idx), axis, -1)
        flat = idx.reshape(-1, idx.shape[-1])
        k = len(clusters)  # counts of each cluster in each resample (a jackknife sample has k - 1 draws)
        cells = (np.arange(len(flat))[:, None] * k + flat).ravel()
        counts = np.bincount(cells, minlength=len(flat) * k).reshape(len(flat), k)
        cm = (counts @ per_cluster).reshape(*idx.shape[:-1], n_classes, n_classes)
        acc = np.trace(cm, axis1=-2, axis2=-1) / cm.sum(axis=(-2, -1))
        return np.stack([acc, _macro_f1_from_cm(cm)])

    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate (constant) resamples: reported below instead
        res = bootstrap((np.arange(len(clusters)),), statistic, n_resamples=n_boot, vectorized=True, batch=200,
                        confidence_level=1 - alpha, method=method, rng=np.random.default_rng(seed))
    lows, highs = res.confidence_interval
    for i, key in enumerate(("top1", "f1_macro")):
        lo, hi = num(lows[i]), num(highs[i])
        out[key] = None if lo is None or hi is None else {"low": lo, "high": hi, "se": num(res.standard_error[i])}
    out["status"] = "ok" if out["top1"] and out["f1_macro"] else "degenerate"
    if out["status"] != "ok":
        out["note"] = f"{method} interval undefined: every resample gave the same value"
    return out


def breakdown(y: np.ndarray, probs: np.ndarray, keys: Sequence[Any], class_names: Sequence[str]) -> dict[str, Any]:
    """n / top-1 / macro-F1 (over the classes present in that subgroup) per value of a column."""
    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs)
    keys_arr = np.array(["(missing)" if k is None else str(k) for k in keys], dtype=object)
    out = {}
    for value in sorted(set(keys_arr)):
        m = keys_arr == value
        out[value] = {
            "n": int(m.sum()),
            "top1": topk_accuracy(y[m], probs[m], 1),
            "f1_macro": macro_f1(y[m], top1(probs[m]), len(class_names)),
            "n_classes_present": int(len(np.unique(y[m]))),
        }
    return out


def _check_arrays(y: np.ndarray, probs: np.ndarray, n_classes: int) -> None:
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise DataError(f"predictions have shape {probs.shape}; expected (N, {n_classes}) for {n_classes} classes")
    if len(y) != len(probs):
        raise DataError(f"{len(y)} labels but {len(probs)} predictions")
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise DataError(f"label index {int(y[bad][0])} outside 0..{n_classes - 1} (row {int(np.nonzero(bad)[0][0])})")


def evaluate_arrays(
    y: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    patients: Sequence[Any] | None = None,
    meta: dict[str, Sequence[Any]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    unit: str = "patient",
    method: str = "percentile",
) -> dict[str, Any]:
    """All metrics of one split: point values, 95 % bootstrap CIs and per-column breakdowns.

    Raises ``DataError`` for mismatched shapes, out-of-range labels or missing patient ids.
    """
    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    _check_arrays(y, probs, len(class_names))
    metrics = point_metrics(y, probs, class_names)
    metrics["ci95"] = bootstrap_ci(y, probs, patients, len(class_names), n_boot, seed, unit=unit, method=method)
    metrics["breakdown"] = {col: breakdown(y, probs, vals, class_names) for col, vals in (meta or {}).items()}
    return metrics
