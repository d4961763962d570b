"""Post-hoc calibration: temperature scaling fit on validation logits, ECE, reliability
diagrams and an abstain threshold, stored in the checkpoint's ModelSpec.

- Temperature: the T > 0 minimizing the validation negative log-likelihood of
  ``softmax(logits / T)`` (Guo et al. 2017), a bounded 1-D search on log T (scipy). T only
  rescales confidence; the predicted class (top-1, top-2, F1) never changes. When validation
  has no error at all, T is not identifiable (NLL falls towards T -> 0) and stays 1; a T at
  the search bounds is flagged in ``temperature_note``.
- ECE: top-label expected calibration error with 15 equal-width confidence bins (the
  definition of torchmetrics' ``multiclass_calibration_error`` with ``norm='l1'``).
- Abstain threshold (on calibrated confidence): the lowest t such that validation cases with
  confidence >= t reach ``target_accuracy`` while at least ``min_coverage`` of them are kept;
  if the target cannot be met at that coverage, the threshold that keeps ``min_coverage``
  (and ``target_reached: false``). With an explicit ``coverage`` the threshold keeps that
  fraction. On a small validation split the threshold is noisy: treat it as a starting point.

Both numbers go into the model file (``runtime.artifact.update_spec``); the ONNX exporter
copies the whole ModelSpec, so exported models carry them too. ECE is also reported on the
test split when given: on validation it is optimistic (T was fit there).
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fetalplanes.core import atomic
from fetalplanes.core.postprocess import softmax

log = logging.getLogger(__name__)

N_BINS = 15
T_BOUNDS = (0.05, 20.0)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), np.asarray(labels, dtype=int)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimizing validation NLL (bounded search on log T)."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0:
        raise ValueError("cannot fit a temperature on an empty validation split")
    lo, hi = (math.log(b) for b in T_BOUNDS)
    res = minimize_scalar(lambda lt: nll(logits, labels, math.exp(lt)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    t = float(math.exp(res.x))
    # Never return a T that is worse than leaving the model alone.
    return t if nll(logits, labels, t) <= nll(logits, labels, 1.0) else 1.0


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> dict[str, list[float]]:
    """Per equal-width confidence bin: count, mean confidence and accuracy (empty bins: 0)."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are (lo, hi] like torchmetrics; confidence 0 cannot occur for a top-label.
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(float)
    conf_sum = np.bincount(which, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(which, weights=correct, minlength=n_bins)
    safe = np.maximum(count, 1)
    return {"edges": edges.tolist(), "count": count.tolist(), "confidence": (conf_sum / safe).tolist(),
            "accuracy": (acc_sum / safe).tolist()}


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    """Top-label expected calibration error (L1, equal-width bins)."""
    b = reliability_bins(probs, labels, n_bins)
    count = np.asarray(b["count"])
    if count.sum() == 0:
        return float("nan")
    gap = np.abs(np.asarray(b["accuracy"]) - np.asarray(b["confidence"]))
    return float((gap * count).sum() / count.sum())


def choose_abstain_threshold(probs: np.ndarray, labels: np.ndarray, target_accuracy: float = 0.95,
                             coverage: float | None = None, min_coverage: float = 0.5) -> dict[str, Any]:
    """Confidence threshold below which a prediction is withheld (see module docstring)."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    n = len(conf)
    if n == 0:
        return {"threshold": 0.0, "rule": "empty", "target_reached": False}
    order = np.argsort(-conf, kind="stable")
    cum_acc = np.cumsum(correct[order]) / np.arange(1, n + 1)
    if coverage is not None:
        if not 0 < coverage <= 1:
            raise ValueError(f"coverage must be in (0, 1], got {coverage}")
        m, rule, reached = max(1, math.ceil(coverage * n)), "coverage", None
    else:
        floor = max(1, math.ceil(min_coverage * n))
        ok = np.nonzero(cum_acc[floor - 1 :] >= target_accuracy)[0]
        m, rule = (floor + int(ok.max()), "target") if ok.size else (floor, "min_coverage")
        reached = bool(ok.size)
    threshold = 0.0 if m >= n else float(conf[order[m - 1]])
    keep = conf >= threshold
    return {
        "threshold": threshold,
        "rule": rule,
        "target_accuracy": target_accuracy,
        "min_coverage": min_coverage,
        "coverage_requested": coverage,
        "target_reached": reached,
        "coverage": float(keep.mean()),
        "accuracy_retained": float(correct[keep].mean()) if keep.any() else float("nan"),
        "accuracy_all": float(correct.mean()),
    }


def split_summary(logits: np.ndarray, labels: np.ndarray, temperature: float, threshold: float) -> dict[str, Any]:
    """NLL / ECE / accuracy before and after scaling, and what the threshold keeps."""
    before, after = softmax(logits, 1.0), softmax(logits, temperature)
    conf = after.max(axis=1)
    correct = after.argmax(axis=1) == labels
    keep = conf >= threshold
    return {
        "n": int(len(labels)),
        "accuracy": float(correct.mean()) if len(labels) else float("nan"),
        "nll_before": nll(logits, labels, 1.0),
        "nll_after": nll(logits, labels, temperature),
        "ece_before": ece(before, labels),
        "ece_after": ece(after, labels),
        "coverage_at_threshold": float(keep.mean()) if len(labels) else float("nan"),
        "accuracy_retained": float(correct[keep].mean()) if keep.any() else float("nan"),
    }


def _temperature(logits: np.ndarray, labels: np.ndarray) -> tuple[float, str]:
    """T and a note; T stays 1 when the validation data cannot identify it."""
    if len(labels) and bool(np.all(logits.argmax(axis=1) == labels)):
        # With no validation error the NLL keeps falling as T -> 0: the 'optimum' is the lower
        # bound and makes the model absurdly over-confident on new data (seen on the demo model:
        # test NLL 0.49 -> 4.77). Such a split cannot calibrate; keep the model as it is.
        log.warning("no validation errors (n = %d): temperature not identifiable, kept at 1.0", len(labels))
        return 1.0, "not fitted: no validation errors, so NLL has no interior minimum; T kept at 1"
    t = fit_temperature(logits, labels)
    lo, hi = T_BOUNDS
    if t <= lo * 1.01 or t >= hi * 0.99:
        log.warning("temperature %.3f at the search bound %s: the validation split is too small or too easy", t, T_BOUNDS)
        return t, f"at the search bound {T_BOUNDS}: validation split too small or too easy to trust"
    return t, "fitted: minimum of validation NLL"


def calibrate_logits(val_logits: np.ndarray, val_labels: Sequence[int], test_logits: np.ndarray | None = None,
                     test_labels: Sequence[int] | None = None, target_accuracy: float = 0.95,
                     coverage: float | None = None, min_coverage: float = 0.5) -> dict[str, Any]:
    """Temperature + abstain threshold from validation logits, with before/after summaries."""
    val_logits = np.asarray(val_logits, dtype=np.float64)
    val_labels = np.asarray(val_labels, dtype=int)
    t, note = _temperature(val_logits, val_labels)
    rule = choose_abstain_threshold(softmax(val_logits, t), val_labels, target_accuracy, coverage, min_coverage)
    out: dict[str, Any] = {"temperature": t, "temperature_note": note, "abstain_threshold": rule["threshold"],
                           "abstain_rule": rule, "n_bins": N_BINS, "fit_on": "val",
                           "val": split_summary(val_logits, val_labels, t, rule["threshold"])}
    if test_logits is not None and test_labels is not None:
        test_labels = np.asarray(test_labels, dtype=int)
        out["test"] = split_summary(np.asarray(test_logits, dtype=np.float64), test_labels, t, rule["threshold"])
    return out


def reliability_png(logits: np.ndarray, labels: np.ndarray, temperature: float, title: str = "") -> bytes:
    """Reliability diagrams before and after temperature scaling, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels, dtype=int)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, t, name in ((axes[0], 1.0, "before (T = 1)"), (axes[1], temperature, f"after (T = {temperature:.3f})")):
        p = softmax(logits, t)
        b = reliability_bins(p, labels)
        edges, count = np.asarray(b["edges"]), np.asarray(b["count"])
        centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
        acc = np.where(count > 0, b["accuracy"], 0.0)
        ax.bar(centers, acc, width=width * 0.95, color="#4878d0", edgecolor="black", linewidth=0.4, label="accuracy")
        conf = np.where(count > 0, b["confidence"], 0.0)
        # Hatched, unfilled: visible over the accuracy bar when the bin is under-confident too.
        ax.bar(centers, conf - acc, bottom=acc, width=width * 0.95, fill=False, hatch="///", edgecolor="#d62728",
               linewidth=0.0, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set_title(f"{name}\nECE {ece(p, labels):.4f}, n = {len(labels)}")
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _logits_and_labels(predictor: Any, samples: Sequence[Any], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    from fetalplanes.evaluation.predict import sample_logits

    return sample_logits(predictor, samples, batch_size), np.array([s.label for s in samples], dtype=int)


def calibrate_checkpoint(checkpoint: str | Path, val_samples: Sequence[Any], out_dir: str | Path,
                         test_samples: Sequence[Any] | None = None, target_accuracy: float = 0.95,
                         coverage: float | None = None, min_coverage: float = 0.5, write: bool = True,
                         batch_size: int = 64, num_workers: int = 0) -> dict[str, Any]:
    """Fit T and the abstain threshold on ``val_samples``; write ``calibration.json`` and
    ``reliability.png`` into ``out_dir`` and (``write``) both numbers into the model file
    (``.ckpt`` or ``.onnx``). ``num_workers`` is accepted for compatibility and unused."""
    from fetalplanes.evaluation.predict import open_model
    from fetalplanes.runtime.artifact import update_spec

    if not val_samples:
        raise ValueError(f"{checkpoint}: no validation images to calibrate on")
    predictor = open_model(checkpoint)
    spec = predictor.spec
    val_logits, val_y = _logits_and_labels(predictor, val_samples, batch_size)
    test = _logits_and_labels(predictor, test_samples, batch_size) if test_samples else (None, None)
    result = calibrate_logits(val_logits, val_y, test[0], test[1], target_accuracy, coverage, min_coverage)
    result["checkpoint"] = str(checkpoint)
    result["written_to_checkpoint"] = bool(write)
    if write:
        update_spec(checkpoint, temperature=result["temperature"], abstain_threshold=result["abstain_threshold"])
    out = Path(out_dir)
    atomic.write_json(out / "calibration.json", result)
    atomic.write_bytes(out / "reliability.png", reliability_png(val_logits, val_y, result["temperature"],
                                                                f"{spec.name}: validation, n = {len(val_y)}"))
    v = result["val"]
    log.info("calibrated %s: T = %.3f, val ECE %.4f -> %.4f, abstain below %.3f", checkpoint, result["temperature"],
             v["ece_before"], v["ece_after"], result["abstain_threshold"])
    return result


def calibrate_on_data(checkpoint: str | Path, data: str | Path, out_dir: str | Path | None = None,
                      **kwargs: Any) -> dict[str, Any]:
    """CLI entry: re-derive the run's validation (and test) split from ``data`` and calibrate."""
    from fetalplanes.data.sources import load_source
    from fetalplanes.evaluation.report import select_split
    from fetalplanes.runtime.artifact import read_spec

    spec = read_spec(checkpoint)
    index = load_source(data, spec.task, spec.class_names)
    trained_on = spec.training.get("data", {}).get("root")
    if trained_on and Path(trained_on).resolve() != Path(index.root).resolve():
        log.warning("%s: the model was trained on %s; the validation split is re-derived from the run's split "
                    "record and is only meaningful on the training data", data, trained_on)
    val = select_split(index, spec, "val")
    try:
        test = select_split(index, spec, "test")
    except ValueError:
        test = None
    out = Path(out_dir) if out_dir is not None else Path(checkpoint).resolve().parent.parent
    return calibrate_checkpoint(checkpoint, val, out, test, **kwargs)
