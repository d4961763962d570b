"""Post-hoc calibration: temperature scaling fit on validation logits, ECE, reliability
diagrams and an abstain threshold, stored in the checkpoint's ModelSpec.

- Temperature: the T > 0 minimizing the validation negative log-likelihood of
  ``softmax(logits / T)`` (Guo et al. 2017), a bounded 1-D search on log T (scipy). T only
  rescales confidence; the predicted class (top-1, top-2, F1) never changes. When validation
  has no error at all, T is not identifiable (NLL falls towards T -> 0) and stays 1; a T at
  the search bounds is flagged in ``temperature_note``.
- ECE: top-label expected calibration error with 15 equal-width, left-closed confidence bins
  [k/15, (k+1)/15) and confidence 1 in a bin of its own: torchmetrics'
  ``multiclass_calibration_error(norm='l1')`` convention (exceptions: ``ece``'s docstring).
  Everything runs in float64 (``core.postprocess.softmax``), so T never reorders the classes
  while the logits of an image span less than ~700 x T (35 at the lower bound T = 0.05).
- Abstain threshold (on calibrated confidence): the lowest t such that validation cases with
  confidence >= t reach ``target_accuracy`` while at least ``min_coverage`` of them are kept;
  if the target cannot be met at that coverage, the threshold that keeps ``min_coverage``
  (and ``target_reached: false``). With an explicit ``coverage`` the threshold keeps at least
  that fraction. Cases tied at a threshold are kept together, and ``target_reached`` is measured
  on exactly the cases the threshold keeps. On a small validation split the threshold is
  noisy: treat it as a starting point.

Both numbers go into the model file (``runtime.artifact.update_spec``); the ONNX exporter
copies the whole ModelSpec, so exported models carry them too. ECE is also reported on the
test split when given: on validation it is optimistic (T was fit there).
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fetalplanes.core import atomic
from fetalplanes.core.errors import DataError, UsageError
from fetalplanes.core.postprocess import softmax, top1
from fetalplanes.data.sources import load_source
from fetalplanes.data.splits import choose_split
from fetalplanes.evaluation.ood import fit_ood_checkpoint
from fetalplanes.evaluation.predict import open_model, sample_logits
from fetalplanes.runtime.artifact import detect_kind, read_spec, update_spec

if TYPE_CHECKING:
    from fetalplanes.core.spec import ModelSpec
    from fetalplanes.data.records import DatasetIndex, Sample
    from fetalplanes.runtime.predictor import Predictor

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
    """The temperature minimizing validation NLL (bounded search on log T); 1 unless another T
    lowers the NLL (so 1 when the NLL does not depend on T). Raises ``DataError`` when empty."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0:
        raise DataError("cannot fit a temperature on an empty validation split")
    lo, hi = (math.log(b) for b in T_BOUNDS)
    res = minimize_scalar(lambda lt: nll(logits, labels, math.exp(lt)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    t = float(math.exp(res.x))
    # Never return a T that is worse than leaving the model alone, and keep T = 1 on a tie: when
    # the logits carry no information about T (every row constant, NLL = log C at every T) the
    # search's last probe would otherwise be returned (T = 20) and stored in the model file.
    return t if nll(logits, labels, t) < nll(logits, labels, 1.0) else 1.0


def bin_index(conf: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Bin of each top-label confidence: k for k/B <= c < (k+1)/B, and B (its own bin) for c == 1.

    torchmetrics' convention (``torch.bucketize(c, linspace(0, 1, B + 1), right=True) - 1``),
    with the edges computed as k / B in float64.
    """
    edges = np.arange(n_bins + 1, dtype=np.float64) / n_bins
    return np.clip(np.searchsorted(edges, np.asarray(conf, dtype=np.float64), side="right") - 1, 0, n_bins)


def _binned(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, confidence sum and correct count in each of the B + 1 bins of ``bin_index``."""
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    conf = probs.max(axis=1)
    correct = (top1(probs) == np.asarray(labels)).astype(float)
    which = bin_index(conf, n_bins)
    return (np.bincount(which, minlength=n_bins + 1).astype(float),
            np.bincount(which, weights=conf, minlength=n_bins + 1),
            np.bincount(which, weights=correct, minlength=n_bins + 1))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> dict[str, list[float]]:
    """Per equal-width confidence bin: count, mean confidence and accuracy (empty bins: 0).

    For display the confidence-1 bin of ``bin_index`` is folded into the last bin, so the lists
    have ``n_bins`` entries; ``ece`` keeps it apart, as torchmetrics does.
    """
    count, conf_sum, acc_sum = (a.copy() for a in _binned(probs, labels, n_bins))
    for a in (count, conf_sum, acc_sum):
        a[n_bins - 1] += a[n_bins]
    count, conf_sum, acc_sum = count[:n_bins], conf_sum[:n_bins], acc_sum[:n_bins]
    safe = np.maximum(count, 1)
    edges = np.arange(n_bins + 1, dtype=np.float64) / n_bins
    return {"edges": edges.tolist(), "count": count.tolist(), "confidence": (conf_sum / safe).tolist(),
            "accuracy": (acc_sum / safe).tolist()}


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    """Top-label expected calibration error: sum over bins of |accuracy - confidence| x share of cases.

    Bins of ``bin_index``. Equal to torchmetrics' ``MulticlassCalibrationError(n_bins=B,
    norm='l1')`` on the same probabilities up to float32 rounding (torchmetrics casts the
    confidences to float32, so a case within ~1e-7 of an edge may land in the neighbouring bin
    there), and except for a tie at the top probability, where the predicted class follows
    ``core.postprocess.top1`` (the higher index) rather than ``torch.max``. NaN for no cases.
    """
    count, conf_sum, acc_sum = _binned(probs, labels, n_bins)
    total = count.sum()
    if total == 0:
        return float("nan")
    return float(np.abs(acc_sum - conf_sum).sum() / total)


def _needed(fraction: float, n: int) -> int:
    """The smallest count of n cases that is at least ``fraction`` of them (no float round-up)."""
    return max(1, math.ceil(round(fraction * n, 9)))


def choose_abstain_threshold(probs: np.ndarray, labels: np.ndarray, target_accuracy: float = 0.95,
                             coverage: float | None = None, min_coverage: float = 0.5) -> dict[str, Any]:
    """Confidence threshold below which a prediction is withheld (see module docstring).

    Only thresholds that a rule ``keep = confidence >= t`` can realise are considered: cases tied
    at the threshold are all kept or all withheld, and ``target_reached`` is the accuracy of
    exactly the kept cases. Raises ``UsageError`` for a coverage outside (0, 1].
    """
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    conf = probs.max(axis=1)
    correct = top1(probs) == np.asarray(labels)
    n = len(np.asarray(labels))
    if n == 0:
        return {"threshold": 0.0, "rule": "empty", "target_reached": False}
    if coverage is not None and not 0 < coverage <= 1:
        raise UsageError(f"coverage must be in (0, 1], got {coverage}")
    order = np.argsort(-conf, kind="stable")
    c_sorted = conf[order]
    # Achievable kept counts: the end of each group of equal confidences.
    ends = np.nonzero(np.r_[c_sorted[1:] < c_sorted[:-1], True])[0] + 1
    acc_at = np.cumsum(correct[order])[ends - 1] / ends
    if coverage is not None:
        m, rule = int(ends[ends >= _needed(coverage, n)][0]), "coverage"
    else:
        enough = ends >= _needed(min_coverage, n)
        ok = enough & (acc_at >= target_accuracy)
        m, rule = (int(ends[ok][-1]), "target") if ok.any() else (int(ends[enough][0]), "min_coverage")
    threshold = 0.0 if m >= n else float(c_sorted[m - 1])
    keep = conf >= threshold
    retained = float(correct[keep].mean())
    return {
        "threshold": threshold,
        "rule": rule,
        "target_accuracy": target_accuracy,
        "min_coverage": min_coverage,
        "coverage_requested": coverage,
        "target_reached": None if rule == "coverage" else bool(retained >= target_accuracy),
        "coverage": float(keep.mean()),
        "accuracy_retained": retained,
        "accuracy_all": float(correct.mean()),
    }


def split_summary(logits: np.ndarray, labels: np.ndarray, temperature: float, threshold: float) -> dict[str, Any]:
    """NLL / ECE / accuracy before and after scaling, and what the threshold keeps."""
    before, after = softmax(logits, 1.0), softmax(logits, temperature)
    conf = after.max(axis=1)
    correct = top1(after) == labels
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
    if len(labels) and bool(np.all(top1(logits) == labels)):
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


def _logits_and_labels(predictor: Predictor, samples: Sequence[Sample], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    return sample_logits(predictor, samples, batch_size), np.array([s.label for s in samples], dtype=int)


def calibrate_checkpoint(checkpoint: str | Path, val_samples: Sequence[Sample], out_dir: str | Path,
                         test_samples: Sequence[Sample] | None = None, target_accuracy: float = 0.95,
                         coverage: float | None = None, min_coverage: float = 0.5, write: bool = True,
                         batch_size: int = 64) -> dict[str, Any]:
    """Fit T and the abstain threshold on ``val_samples``; write ``calibration.json`` and
    ``reliability.png`` into ``out_dir`` and (``write``) both numbers into the model file
    (``.ckpt`` or ``.onnx``). The samples are the caller's: :func:`calibrate_on_data` chooses them."""
    if not val_samples:
        raise DataError(f"{checkpoint}: no validation images to calibrate on")
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


def _fit_ood(checkpoint: str | Path, index: DatasetIndex, spec: ModelSpec, val: Sequence[Sample], out: Path, write: bool) -> dict[str, Any]:
    """The OOD gate refitted with the calibration (``evaluation.ood``): statistics on the run's
    training split, threshold on ``val``. Only a checkpoint can be refitted (an ONNX file keeps the
    gate it was exported with); a split that cannot be taken leaves the gate as it is, and says why."""
    if detect_kind(checkpoint) != "checkpoint":
        return {"refitted": False, "note": "an ONNX file keeps the OOD gate it was exported with"}
    try:
        train = choose_split(index, spec, "train").samples
    except DataError as err:
        log.warning("%s: OOD gate not refitted: %s", checkpoint, err)
        return {"refitted": False, "note": str(err)}
    return {"refitted": True, **fit_ood_checkpoint(checkpoint, train, val, out, write=write)}


def _test_split(index: DatasetIndex, spec: ModelSpec, val: Sequence[Sample]) -> tuple[list[Sample] | None, dict[str, Any]]:
    """(test samples or None, their selection summary) for the calibration report: never a
    validation image; refused (``DataError``: e.g. only images the model saw) -> None and why."""
    try:
        test = choose_split(index, spec, "test")
    except DataError as err:
        return None, {"refused": str(err)}
    in_val = {s.path for s in val}
    samples = [s for s in test.samples if s.path not in in_val]
    summary = test.summary()
    if samples and len(samples) < len(test.samples):
        summary["notes"].append(f"{len(test.samples) - len(samples)} validation image(s) left out of the test summary")
    return samples or None, summary


def calibrate_on_data(checkpoint: str | Path, data: str | Path, out_dir: str | Path | None = None, *,
                      val_samples: Sequence[Sample] | None = None, report_test: bool = True, write: bool = True,
                      **kwargs: Any) -> dict[str, Any]:
    """Calibrate on validation: the one entry (``fetalplanes calibrate`` and the train pipeline,
    ``workflow.calibrate``). Fits T and the abstain threshold on the run's validation images,
    refits the OOD gate (training-split statistics, validation threshold) and writes
    ``calibration.json``, ``reliability.png`` and ``ood.json`` into ``out_dir`` (default: the
    run folder) and, with ``write``, the numbers into the model file.

    Validation images: ``val_samples`` when the caller holds them (the training run's own),
    else ``data.splits.choose_split`` (the model's record of its splits, else the run's recipe
    re-applied to ``data``). With ``report_test`` the test split's summary is added (T is still
    fit on validation only); it is left out when no test split can be taken without images the
    model saw (``DataError``), and never holds a validation image. ``kwargs`` go to
    :func:`calibrate_checkpoint` (``target_accuracy``, ``coverage``, ``min_coverage``,
    ``batch_size``). calibration.json gains ``selection`` (which images, and whether the model
    saw them) and ``ood``. Raises ``DataError`` when there are no validation images.
    """
    spec = read_spec(checkpoint)
    index = load_source(data, spec.task, spec.class_names)
    trained_on = spec.training.get("data", {}).get("root")
    if trained_on and Path(trained_on).resolve() != Path(index.root).resolve():
        log.warning("%s: the model was trained on %s; the validation split is re-derived from the run's split "
                    "record and is only meaningful on the training data", data, trained_on)
    if val_samples:
        val = list(val_samples)
        selection: dict[str, Any] = {"val": {"split": "val", "rule": "training run", "n": len(val)}}
    else:
        chosen = choose_split(index, spec, "val")
        val, selection = chosen.samples, {"val": chosen.summary()}
    test_samples = None
    if report_test:
        test_samples, selection["test"] = _test_split(index, spec, val)
    out = Path(out_dir) if out_dir is not None else Path(checkpoint).resolve().parent.parent
    result = calibrate_checkpoint(checkpoint, val, out, test_samples, write=write, **kwargs)
    result["selection"] = selection
    result["ood"] = _fit_ood(checkpoint, index, spec, val, out, write)
    atomic.write_json(out / "calibration.json", result)  # calibrate_checkpoint's file, with the selection
    return result
