"""OnnxPredictor: the torch-free Predictor backend for exported ``.onnx`` models.

Imports only numpy, onnxruntime (through ``runtime.session``) and ``fetalplanes.core``. The
class names, preprocessing, temperature and abstain threshold all come from the ModelSpec
stored in the ONNX metadata by ``fetalplanes export``, so the runtime feeds the model exactly
as training did and answers exactly like the PyTorch backend.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

import numpy as np

from fetalplanes.core.errors import ModelFileError
from fetalplanes.runtime.artifact import OOD_KEY, spec_from_metadata
from fetalplanes.runtime.predictor import Predictor
from fetalplanes.runtime.session import load_session

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "OnnxPredictor"]

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
FEATURES_NAME = "features"  # the OOD gate's input (``deploy.export``)


class OnnxPredictor(Predictor):
    """A fetalplanes ONNX model run with ONNX Runtime (no torch); the ``onnx`` Predictor backend.

    ``threads``: ORT intra-op threads for this session only (default: the usable cores);
    ``options``: an ``ort.SessionOptions`` replacing the defaults (``bench`` sweeps them).
    Raises ``ModelFileError`` for a file that is not a fetalplanes export.
    """

    kind = "onnx"

    def __init__(
        self, model_path: str | os.PathLike[str], threads: int | None = None, providers: Sequence[Any] | None = None,
        options: Any = None,
    ) -> None:
        session = load_session(model_path, threads, providers, options)
        meta = dict(session.get_modelmeta().custom_metadata_map)
        super().__init__(model_path, spec_from_metadata(meta, str(model_path)), meta.get(OOD_KEY))
        self.session = session
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
        if self.has_ood_gate and FEATURES_NAME not in outputs:
            raise ModelFileError(f"{self.path}: the spec has an OOD gate but the graph has no '{FEATURES_NAME}' output; "
                                 "re-export it with `fetalplanes export`")
        shape = inputs[INPUT_NAME].shape
        size = self.spec.preprocessing.image_size
        if len(shape) != 4 or list(shape[1:]) != [3, size, size]:
            raise ModelFileError(f"{self.path}: input shape {shape} does not match the spec's (N, 3, {size}, {size})")

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._session_run([OUTPUT_NAME], x)[0]

    def _run_features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, feats = self._session_run([OUTPUT_NAME, FEATURES_NAME], x)
        return logits, feats

    def _session_run(self, names: list[str], x: np.ndarray) -> list[np.ndarray]:
        """``session.run``; a graph that fails at run time (an allocation it cannot make, a shape it
        cannot reshape: checks at load cannot see these) is a ModelFileError naming the file, not a traceback."""
        try:
            return self.session.run(names, {INPUT_NAME: x})
        except Exception as exc:  # noqa: BLE001 - ORT's Fail/RuntimeException/... derive from Exception only
            text = " ".join(str(exc).split())
            raise ModelFileError(
                f"{self.path}: ONNX Runtime could not run the model on a batch of {len(x)} "
                f"({type(exc).__name__}: {text[:300]}); the file loaded but its graph fails at run time; "
                "expected an .onnx from `fetalplanes export`") from None

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "quantization": json.loads(self.metadata.get("quantization", "null")),
            "providers": self.session.get_providers(),
        }
