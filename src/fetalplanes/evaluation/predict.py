"""Predictions over dataset samples through the one Predictor (``fetalplanes.runtime``).

Evaluation, calibration and the explain pipeline score ``Sample`` lists with any model file
(``.ckpt`` or ``.onnx``): :func:`open_model` accepts a path or an already loaded Predictor.
A sample is one labelled file: a multi-frame file is scored by its first frame, as the
training data loaders read it (``core.io.load_image``).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from fetalplanes.core.errors import DataError
from fetalplanes.core.io import report_bad_files
from fetalplanes.data.records import Sample
from fetalplanes.runtime.loader import load_predictor
from fetalplanes.runtime.predictor import FileResult, Predictor

# Threads that decode images while the model runs (Pillow/pydicom release the GIL).
DECODE_WORKERS = 2


def open_model(model: str | os.PathLike[str] | Predictor) -> Predictor:
    """A Predictor for a model path (``.ckpt`` or ``.onnx``), or ``model`` itself if it is one."""
    return model if isinstance(model, Predictor) else load_predictor(model)


def sample_logits(predictor: Predictor, samples: Sequence[Sample], batch_size: int = 32,
                  workers: int = DECODE_WORKERS) -> np.ndarray:
    """(N, C) float32 logits for ``samples`` in order, preprocessed exactly as in training.

    Raises ``BadFilesError`` listing every unreadable sample."""
    return score_samples(predictor, samples, batch_size, False, workers)[1]


def score_samples(predictor: Predictor, samples: Sequence[Sample], batch_size: int = 32, skip_bad: bool = False,
                  workers: int = DECODE_WORKERS) -> tuple[list[Sample], np.ndarray, list[dict[str, str]]]:
    """(readable samples, their logits (n, C) float32, ``[{"image", "error"}]`` for the left-out ones).

    Each image is decoded once; every unreadable one is listed at once by the one rule
    (:func:`fetalplanes.core.io.report_bad_files`): ``BadFilesError`` unless ``skip_bad``.
    """
    per_sample = _first_results(predictor.predict([s.path for s in samples], batch_size=batch_size, workers=workers),
                                len(samples))
    bad = [(str(samples[i].path), _reason(r)) for i, r in enumerate(per_sample) if not r.ok]
    report_bad_files(bad, len(samples), skip_bad)
    kept = [(s, r) for s, r in zip(samples, per_sample) if r.ok]
    logits = (np.stack([r.logits for _, r in kept]) if kept
              else np.zeros((0, predictor.spec.num_classes), dtype=np.float32))
    return [s for s, _ in kept], logits, [{"image": name, "error": reason} for name, reason in bad]


def _first_results(results: list[FileResult], n: int) -> list[FileResult]:
    """Each sample's result: its still or first frame's answer or error; a file-level error (unreadable,
    no frame decoded) only when there is no frame row. A short-read note does not spoil frame 0."""
    first: dict[int, FileResult] = {}
    for r in results:  # in (index, frame) order
        if r.index not in first or (first[r.index].frame is None and not first[r.index].ok and r.frame is not None):
            first[r.index] = r
    if len(first) != n:
        raise DataError(f"expected one result per sample ({n}), got results for {len(first)}")
    return [first[i] for i in range(n)]


def _reason(r: FileResult) -> str:
    """The error without the leading file name (``report_bad_files`` prints the name itself)."""
    text = r.error or "no answer"
    prefix = f"{r.path}: "
    return text[len(prefix):] if r.path is not None and text.startswith(prefix) else text
