"""OnnxPredictor: the torch-free Predictor backend for exported ``.onnx`` models.

Imports only numpy, Pillow, onnxruntime and ``fetalplanes.core`` (pydicom via core.io for
DICOM). The class names, preprocessing, temperature and abstain threshold all come from
the ModelSpec stored in the ONNX metadata by ``fetalplanes export``, so the runtime feeds
the model exactly as training did and answers exactly like the PyTorch path.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fetalplanes.core.spec import ModelSpec
from fetalplanes.runtime.artifact import ModelFileError, spec_from_metadata
from fetalplanes.core.predictor import DEFAULT_BATCH, BasePredictor  # noqa: F401  (DEFAULT_BATCH re-exported)
from fetalplanes.runtime.session import available_cores, load_session, session_options  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"


# Kept for callers of the first runtime API: one error type for unusable model files.
RuntimeModelError = ModelFileError
load_spec = spec_from_metadata


class OnnxPredictor(BasePredictor):
    """A fetalplanes ONNX model run with ONNX Runtime (no torch); the ``onnx`` Predictor backend."""

    kind = "onnx"

    def __init__(
        self, model_path: str | os.PathLike[str], threads: int | None = None, providers: Sequence[Any] | None = None,
        options: Any = None,
    ) -> None:
        self.path = Path(model_path)
        self.session = load_session(self.path, threads, providers, options)
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.spec: ModelSpec = spec_from_metadata(meta, str(self.path))
        self.metadata = meta
        self._check_io()

    def _check_io(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise ModelFileError(
                f"{self.path}: expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}', "
                f"found inputs {sorted(inputs)} and outputs {outputs}"
            )
        shape = inputs[INPUT_NAME].shape
        size = self.spec.preprocessing.image_size
        if len(shape) != 4 or list(shape[1:]) != [3, size, size]:
            raise ModelFileError(f"{self.path}: input shape {shape} does not match the spec's (N, 3, {size}, {size})")

    def predict_arrays(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed batch (N, 3, S, S) float32 -> logits (N, C) float32."""
        x = self.check_batch(x)
        if len(x) == 0:
            return np.zeros((0, self.spec.num_classes), dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "quantization": json.loads(self.metadata.get("quantization", "null")),
            "providers": self.session.get_providers(),
        }
