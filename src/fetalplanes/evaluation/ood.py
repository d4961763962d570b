"""Fitting the out-of-distribution gate of a trained checkpoint, and measuring it on OOD data.

``fit_ood_checkpoint`` runs when a model is calibrated (``workflow.calibrate``): the pooled
backbone features (``PlaneClassifier.forward_with_features``) of the *training* split give the class means, the shared (Ledoit-Wolf) covariance and
the kNN bank; the *validation* split sets the threshold at the stated in-distribution acceptance
(95 %); both go into the checkpoint (``runtime.artifact.write_ood``), and ``fetalplanes export``
copies them into the ONNX file. ``ood_report`` scores an in-distribution split against a folder
of out-of-distribution images for ``evaluate --ood-data``. The maths is ``core.ood``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fetalplanes.core import atomic
from fetalplanes.core import ood as ood_math
from fetalplanes.core.errors import DataError
from fetalplanes.core.io import expand_inputs, load_image
from fetalplanes.core.preprocess import preprocess_batch
from fetalplanes.runtime.artifact import read_spec, write_ood

if TYPE_CHECKING:
    from fetalplanes.runtime.predictor import Predictor

log = logging.getLogger(__name__)


def checkpoint_features(checkpoint: str | Path, images: Sequence[Any], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, C), penultimate features (N, F)) float32 of images or paths, preprocessed as in training."""
    import torch

    from fetalplanes.models.checkpoint import load_model

    model, spec = load_model(checkpoint)
    model.eval()
    logits, feats = [], []
    for i in range(0, len(images), batch_size):
        chunk = [im if not isinstance(im, (str, Path)) else load_image(Path(im)) for im in images[i : i + batch_size]]
        x = torch.from_numpy(preprocess_batch(chunk, spec.preprocessing))
        with torch.inference_mode():
            lg, ft = model.forward_with_features(x)
        logits.append(lg.float().numpy())
        feats.append(ft.float().numpy())
    if not logits:
        raise DataError(f"{checkpoint}: no images to compute features on")
    return np.concatenate(logits), np.concatenate(feats)


def fit_ood_checkpoint(checkpoint: str | Path, train_samples: Sequence[Any], val_samples: Sequence[Any],
                       out_dir: str | Path | None = None, acceptance: float = ood_math.DEFAULT_ACCEPTANCE,
                       score: str = ood_math.DEFAULT_SCORE, write: bool = True) -> dict[str, Any]:
    """Fit the OOD statistics on ``train_samples``, the threshold on ``val_samples``; store both in
    ``checkpoint`` (``write``) and ``ood.json`` in ``out_dir``. Returns the ``spec.ood`` summary."""
    if not train_samples or not val_samples:
        raise DataError(f"{checkpoint}: the OOD gate needs training and validation images")
    spec = read_spec(checkpoint)
    _, train_f = checkpoint_features(checkpoint, [s.path for s in train_samples])
    _, val_f = checkpoint_features(checkpoint, [s.path for s in val_samples])
    labels = np.array([s.label for s in train_samples], dtype=int)
    stats, summary = ood_math.fit_stats(train_f, labels, spec.num_classes, val_f, score_name=score,
                                        acceptance=acceptance)
    blob = ood_math.encode_stats(stats)
    summary["stats_sha256"] = ood_math.stats_digest(blob)
    summary["feature"] = "pooled backbone features (before attention and head)"
    if write:
        write_ood(checkpoint, summary, blob)
    if out_dir is not None:
        atomic.write_json(Path(out_dir) / "ood.json", summary)
    log.info("OOD gate for %s: %s score, threshold %.4g (accepts %.1f %% of %d validation images), fit on %d "
             "training images, %d-d features, shrinkage %.3f", checkpoint, summary["score"], summary["threshold"],
             100 * summary["val_acceptance"], summary["n_val"], summary["n_train"], summary["dim"], summary["shrinkage"])
    return summary


def _scored(predictor: Predictor, inputs: Sequence[Any], batch_size: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(gate scores, withheld flags (OOD or abstain)) of every answered still or frame of
    ``inputs``, and the counts ``{"scored", "refused_by_gate", "unreadable"}``: answered, refused
    by the DICOM metadata gate (a readable file that is not ultrasound), and unreadable (a file or
    frame that cannot be decoded)."""
    results = predictor.predict(list(inputs), batch_size=batch_size)
    answered = [r.prediction for r in results if r.ok]
    gate = sum(1 for r in results if not r.ok and r.gate_refused)
    counts = {"scored": len(answered), "refused_by_gate": gate,
              "unreadable": sum(1 for r in results if not r.ok) - gate}
    scores = np.array([p.ood_score for p in answered], dtype=np.float64)
    withheld = np.array([not p.accepted for p in answered], dtype=bool)
    return scores, withheld, counts


def ood_report(predictor: Predictor, id_paths: Sequence[Any], ood_data: Sequence[str | Path], n_boot: int = 1000,
               batch_size: int = 32) -> dict[str, Any]:
    """The gate measured on in-distribution images against folders of out-of-distribution ones
    (``evaluate --ood-data``): per OOD folder AUROC, FPR@95 and the rejection rates at the shipped
    threshold (``core.ood.ood_metrics``, 95 % bootstrap intervals over images), the share the
    product withholds (OOD or abstain), and apart from the ``scored`` inputs how many were refused by
    the metadata gate (``refused_by_gate``: a non-ultrasound DICOM) and how many could not be read
    (``unreadable``: files or frames). Raises ``DataError`` for a model without a gate or an empty folder.
    """
    spec = predictor.spec
    if not predictor.has_ood_gate:
        raise DataError(f"{predictor.path}: this model file has no OOD gate to measure; calibrate the checkpoint "
                        "with this fetalplanes version (fetalplanes train / calibrate) and export it again")
    threshold = float(spec.ood["threshold"])
    id_scores, id_withheld, _ = _scored(predictor, id_paths, batch_size)
    out: dict[str, Any] = {"score": spec.ood["score"], "threshold": threshold, "acceptance": spec.ood.get("acceptance"),
                           "n_id": int(len(id_scores)), "id_rejected": float((id_scores > threshold).mean()),
                           "id_rejected_ci95": ood_math.rate_interval(id_scores > threshold, n_boot),
                           "id_withheld": float(id_withheld.mean()), "sets": {}}
    for folder in map(Path, ood_data):
        files = expand_inputs([folder])
        if not files:
            raise DataError(f"{folder}: no images found for --ood-data")
        scores, withheld, counts = _scored(predictor, files, batch_size)
        row = ood_math.ood_metrics(id_scores, scores, threshold, n_boot)
        row.update(path=str(folder), n_files=len(files), **counts,
                   withheld=float(withheld.mean()) if len(withheld) else float("nan"))
        out["sets"][folder.name or str(folder)] = row
    return out


def report_lines(o: dict[str, Any]) -> list[str]:
    """report.md's section on the OOD gate (``ood_report``'s record)."""
    def ci(x: list[float] | None) -> str:
        return f" [{x[0]:.3f}, {x[1]:.3f}]" if x else ""

    lines = ["", "## Out-of-distribution inputs", "",
             f"Gate `{o['score']}`, threshold {o['threshold']:.4g} (set at {o['acceptance']} validation acceptance). "
             f"In-distribution ({o['n_id']} images of this split) rejected by the gate: {o['id_rejected']:.3f}"
             f"{ci(o['id_rejected_ci95'])}; withheld with abstain: {o['id_withheld']:.3f}. Intervals: 95 % percentile "
             "bootstrap over images.", "",
             "| OOD set | n scored | refused by the metadata gate | unreadable | AUROC | FPR@95 | rejected by the gate | "
             "withheld (OOD or abstain) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in o["sets"].items():
        lines.append(f"| {name} | {r['n_ood']} | {r['refused_by_gate']} | {r['unreadable']} | {r['auroc']:.3f}{ci(r['auroc_ci95'])} | "
                     f"{r['fpr95']:.3f}{ci(r['fpr95_ci95'])} | {r['ood_rejected']:.3f}{ci(r['ood_rejected_ci95'])} | "
                     f"{r['withheld']:.3f} |")
    return lines
