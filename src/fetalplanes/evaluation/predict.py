"""Predictions over dataset samples through the one Predictor interface (``fetalplanes.runtime``).

Evaluation, calibration and the explain pipeline score ``Sample`` lists with any model file
(``.ckpt`` or ``.onnx``): :func:`open_model` accepts a path or an already loaded Predictor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from fetalplanes.data.records import Sample
from fetalplanes.runtime.base import BasePredictor, expand_inputs, load_predictor

# Threads that decode images while the model runs (Pillow/pydicom release the GIL).
DECODE_WORKERS = 2


def open_model(model: str | os.PathLike[str] | BasePredictor) -> BasePredictor:
    """A Predictor for a model path (``.ckpt`` or ``.onnx``), or ``model`` itself if it is one."""
    return model if isinstance(model, BasePredictor) else load_predictor(model)


def sample_logits(predictor: BasePredictor, samples: Sequence[Sample], batch_size: int = 32,
                  workers: int = DECODE_WORKERS) -> np.ndarray:
    """(N, C) float32 logits for ``samples`` in order, preprocessed exactly as in training."""
    return predictor.logits([s.path for s in samples], batch_size, workers)


def samples_from_paths(paths: Sequence[str | Path]) -> list[Sample]:
    """Unlabelled samples (label -1) for prediction on arbitrary files or folders."""
    return [Sample(f, -1) for f in expand_inputs(paths)]
