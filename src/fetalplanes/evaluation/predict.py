"""Predictions over dataset samples through the one Predictor interface (``fetalplanes.runtime``).

Evaluation, calibration and the explain pipeline score ``Sample`` lists with any model file
(``.ckpt`` or ``.onnx``): :func:`open_model` accepts a path or an already loaded Predictor.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from fetalplanes.core.io import bad_entry, report_bad_files
from fetalplanes.data.records import Sample
from fetalplanes.data.sources import samples_from_paths  # noqa: F401  (re-exported)
from fetalplanes.runtime.base import BasePredictor, load_predictor

# Threads that decode images while the model runs (Pillow/pydicom release the GIL).
DECODE_WORKERS = 2


def open_model(model: str | os.PathLike[str] | BasePredictor) -> BasePredictor:
    """A Predictor for a model path (``.ckpt`` or ``.onnx``), or ``model`` itself if it is one."""
    return model if isinstance(model, BasePredictor) else load_predictor(model)


def sample_logits(predictor: BasePredictor, samples: Sequence[Sample], batch_size: int = 32,
                  workers: int = DECODE_WORKERS) -> np.ndarray:
    """(N, C) float32 logits for ``samples`` in order, preprocessed exactly as in training."""
    return predictor.logits([s.path for s in samples], batch_size, workers)


def score_samples(predictor: BasePredictor, samples: Sequence[Sample], batch_size: int = 32, skip_bad: bool = False,
                  workers: int = DECODE_WORKERS) -> tuple[list[Sample], np.ndarray, list[dict[str, str]]]:
    """(readable samples, their logits (n, C) float32, ``[{"image", "error"}]`` for the left-out ones).

    Each image is decoded once; every unreadable one is listed at once by the one rule
    (:func:`fetalplanes.core.io.report_bad_files`): ``BadFilesError`` unless ``skip_bad``.
    """
    logits, errors = predictor.readable_logits([s.path for s in samples], batch_size, workers)
    bad = [bad_entry(err, samples[i].path) for i, err in errors]
    report_bad_files(bad, len(samples), skip_bad)
    failed = {i for i, _ in errors}
    kept = [s for i, s in enumerate(samples) if i not in failed]
    return kept, logits, [{"image": name, "error": reason} for name, reason in bad]


