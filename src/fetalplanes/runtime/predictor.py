"""OnnxPredictor: classify ultrasound images with an exported ``.onnx`` model, no torch.

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
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from fetalplanes.core.errors import UserError
from fetalplanes.core.io import load_image
from fetalplanes.core.postprocess import Prediction, decide, softmax
from fetalplanes.core.preprocess import preprocess_batch
from fetalplanes.core.spec import ModelSpec

log = logging.getLogger(__name__)

SPEC_KEY = "fetalplanes_spec"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
DEFAULT_BATCH = 32


class RuntimeModelError(UserError, ValueError):
    """The file is not a usable fetalplanes ONNX model (the message names the file)."""


def load_spec(metadata: dict[str, str], source: str = "model") -> ModelSpec:
    """The ModelSpec stored in ONNX ``metadata_props`` (key ``fetalplanes_spec``)."""
    if SPEC_KEY not in metadata:
        raise RuntimeModelError(
            f"{source}: not a fetalplanes export (no '{SPEC_KEY}' metadata; found keys {sorted(metadata)}); "
            "create one with `fetalplanes export --checkpoint CKPT --out model.onnx`"
        )
    try:
        return ModelSpec.from_json(metadata[SPEC_KEY])
    except (ValueError, TypeError) as err:
        raise RuntimeModelError(f"{source}: invalid '{SPEC_KEY}' metadata: {err}") from None


def available_cores() -> int:
    """CPU cores this process may use (respects affinity / container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("onnxruntime is not installed; install the runtime with `pip install fetalplanes[runtime]`") from None
    return onnxruntime


def session_options(threads: int | None = None) -> Any:
    """ORT options for small-batch CPU inference: all graph optimizations, one intra-op
    thread per core, sequential execution (the graph is a chain: inter-op threads idle)."""
    ort = _onnxruntime()

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = int(threads) if threads else available_cores()
    opts.inter_op_num_threads = 1
    # Spinning worker threads win ~7 % on an idle, dedicated box but halve throughput when the
    # host is shared (measured in docs/deploy.md): FETALPLANES_ORT_SPIN=0 turns them off.
    if os.environ.get("FETALPLANES_ORT_SPIN", "1").strip() in ("0", "false", "no"):
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OnnxPredictor:
    """Load a fetalplanes ONNX model once; predict arrays, PIL images, files or bytes."""

    def __init__(
        self, model_path: str | os.PathLike[str], threads: int | None = None, providers: Sequence[Any] | None = None
    ) -> None:
        ort = _onnxruntime()
        self.path = Path(model_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX model file not found")
        try:
            self.session = ort.InferenceSession(
                str(self.path), session_options(threads), providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as err:  # ORT raises its own exception types for bad files
            raise RuntimeModelError(f"{self.path}: cannot load ONNX model ({type(err).__name__}: {err})") from None
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.spec: ModelSpec = load_spec(meta, str(self.path))
        self.metadata = meta
        self._check_io()

    def _check_io(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise RuntimeModelError(
                f"{self.path}: expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}', "
                f"found inputs {sorted(inputs)} and outputs {outputs}"
            )
        shape = inputs[INPUT_NAME].shape
        size = self.spec.preprocessing.image_size
        if len(shape) != 4 or list(shape[1:]) != [3, size, size]:
            raise RuntimeModelError(f"{self.path}: input shape {shape} does not match the spec's (N, 3, {size}, {size})")

    @property
    def input_size(self) -> int:
        return self.spec.preprocessing.image_size

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    def __repr__(self) -> str:
        return f"OnnxPredictor({str(self.path)!r}, {self.spec.name}, {self.spec.num_classes} classes, {self.input_size} px)"

    def predict_arrays(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed batch (N, 3, S, S) float32 -> logits (N, C) float32."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        s = self.input_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(f"expected an array of shape (N, 3, {s}, {s}), got {x.shape}")
        if len(x) == 0:
            return np.zeros((0, self.spec.num_classes), dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    def logits(self, images: Sequence[Image.Image], batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Logits (N, C) for PIL images, preprocessed exactly as in training, in batches."""
        out = [
            self.predict_arrays(preprocess_batch(images[i : i + batch_size], self.spec.preprocessing))
            for i in range(0, len(images), max(1, batch_size))
        ]
        return np.concatenate(out) if out else np.zeros((0, self.spec.num_classes), dtype=np.float32)

    def predict_images(self, images: Sequence[Image.Image], k: int = 2, batch_size: int = DEFAULT_BATCH) -> list[Prediction]:
        """Calibrated probabilities (spec temperature), top-k and abstain flag per image."""
        probs = softmax(self.logits(list(images), batch_size), self.spec.temperature)
        return decide(probs, self.spec.class_names, k, self.spec.abstain_threshold) if len(probs) else []

    def predict_files(
        self, paths: Iterable[str | os.PathLike[str]], k: int = 2, batch_size: int = DEFAULT_BATCH
    ) -> list[tuple[Path, Prediction]]:
        """[(path, Prediction)] for image files and folders (searched recursively)."""
        from fetalplanes.core.io import list_images

        files: list[Path] = []
        for p in map(Path, paths):
            if p.is_dir():
                files += list_images(p)
            elif p.exists():
                files.append(p)
            else:
                raise FileNotFoundError(f"{p}: no such file or folder")
        out: list[tuple[Path, Prediction]] = []
        for i in range(0, len(files), max(1, batch_size)):  # decode a batch at a time
            chunk = files[i : i + batch_size]
            out += list(zip(chunk, self.predict_images([load_image(f) for f in chunk], k, batch_size)))
        return out

    def predict_bytes(self, data: bytes, name: str | None = None, k: int = 2) -> Prediction:
        """One encoded image (PNG/JPEG/BMP/TIFF/DICOM bytes, e.g. an upload) -> Prediction."""
        return self.predict_images([load_image(data, name=name)], k)[0]

    def describe(self) -> dict[str, Any]:
        """What the model is and expects (for logs, `--info` output and the web service)."""
        pre = self.spec.preprocessing
        return {
            "path": str(self.path),
            "name": self.spec.name,
            "task": self.spec.task,
            "class_names": list(self.spec.class_names),
            "image_size": pre.image_size,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "temperature": self.spec.temperature,
            "abstain_threshold": self.spec.abstain_threshold,
            "quantization": json.loads(self.metadata.get("quantization", "null")),
            "providers": self.session.get_providers(),
        }
