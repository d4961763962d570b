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
from typing import Any, Sequence

import numpy as np

from fetalplanes.core import atomic
from fetalplanes.core import ood as ood_math
from fetalplanes.core.errors import DataError

log = logging.getLogger(__name__)


def checkpoint_features(checkpoint: str | Path, images: Sequence[Any], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, C), penultimate features (N, F)) float32 of images or paths, preprocessed as in training."""
    import torch

    from fetalplanes.core.io import load_image
    from fetalplanes.core.preprocess import preprocess_batch
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
    from fetalplanes.runtime.artifact import read_spec, write_ood

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
