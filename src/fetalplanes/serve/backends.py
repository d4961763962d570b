"""Model backends for the web service: a PyTorch checkpoint or an ONNX model behind one interface.

The service only needs three things from a model: its :class:`ModelSpec`, calibrated
predictions for decoded images, and (when possible) a Grad-CAM overlay. ``load_backend``
picks the backend from the file suffix. Torch is imported only inside
:class:`TorchBackend`, so a torch-free install (``pip install fetalplanes[serve]``) can
serve ONNX models.

Thread safety: request handlers call backends from a thread pool. ONNX Runtime sessions
are safe to ``run`` concurrently; the torch backend serialises model use with a lock
because Grad-CAM registers hooks on the shared model, which would otherwise capture
activations of a concurrent request.
"""

from __future__ import annotations

import importlib
import logging
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from fetalplanes.core.postprocess import Prediction, decide, softmax
from fetalplanes.core.preprocess import preprocess_batch
from fetalplanes.core.spec import ModelSpec

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "ONNX_SUFFIXES",
    "Backend",
    "ExplainUnavailable",
    "OnnxBackend",
    "TorchBackend",
    "check_model_path",
    "load_backend",
]

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES: tuple[str, ...] = (".ckpt", ".pt", ".pth")
ONNX_SUFFIXES: tuple[str, ...] = (".onnx",)


class ExplainUnavailable(RuntimeError):
    """This backend cannot produce heat maps; the message says why and what to do instead."""


class Backend(ABC):
    """A loaded model: ``spec``, calibrated predictions and optional Grad-CAM overlays."""

    kind: str = ""
    spec: ModelSpec
    path: Path

    @abstractmethod
    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, C) calibrated (temperature-scaled) class probabilities."""

    def predict(self, images: Sequence[Image.Image], k: int = 2) -> list[Prediction]:
        """Top-k predictions with the model's abstain threshold applied."""
        if not images:
            return []
        probs = self.probabilities(images)
        return decide(probs, self.spec.class_names, k, self.spec.abstain_threshold)

    @property
    def explain_unavailable_reason(self) -> str | None:
        """None when :meth:`explain_png` works, else a sentence for the user."""
        return None

    def explain_png(self, image: Image.Image) -> bytes:
        """Grad-CAM overlay of the predicted class as PNG bytes, at the image's size."""
        raise ExplainUnavailable(self.explain_unavailable_reason or "explanations are not available")


class TorchBackend(Backend):
    """A training checkpoint (``.ckpt``) run with PyTorch on CPU; supports Grad-CAM."""

    kind = "checkpoint"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import torch

        from fetalplanes.models.checkpoint import load_checkpoint

        if threads:
            torch.set_num_threads(int(threads))
        self.path = Path(path)
        self._model, self.spec = load_checkpoint(self.path)
        self._lock = threading.Lock()
        self._explain_reason = _explain_import_problem()

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        x = torch.from_numpy(preprocess_batch(list(images), self.spec.preprocessing))
        with self._lock, torch.inference_mode():
            logits = self._model(x).float().numpy()
        return softmax(logits, self.spec.temperature)

    @property
    def explain_unavailable_reason(self) -> str | None:
        return self._explain_reason

    def explain_png(self, image: Image.Image) -> bytes:
        if self._explain_reason:
            raise ExplainUnavailable(self._explain_reason)
        from fetalplanes.explain import compute_cam, overlay_png

        with self._lock:
            result = compute_cam(self._model, self.spec, image)  # the checkpoint's explain settings
        return overlay_png(image, result, self.spec)


class OnnxBackend(Backend):
    """An exported ONNX model run with ONNX Runtime (no torch); no Grad-CAM."""

    kind = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            from fetalplanes.runtime import OnnxPredictor
        except ImportError as err:
            raise ValueError(f"{path}: serving ONNX models needs fetalplanes.runtime and onnxruntime ({err})") from None
        self.path = Path(path)
        self._predictor = OnnxPredictor(self.path, threads=threads)
        self.spec = self._predictor.spec

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        return softmax(self._predictor.logits(list(images)), self.spec.temperature)

    @property
    def explain_unavailable_reason(self) -> str | None:
        return (
            f"Heat maps are not available for plain ONNX models ({self.path.name}): Grad-CAM needs the "
            "PyTorch checkpoint. Serve the .ckpt file to get explanations."
        )


def _explain_import_problem() -> str | None:
    """None when fetalplanes.explain (and pytorch-grad-cam) import, else the reason."""
    try:
        module = importlib.import_module("fetalplanes.explain")
        # Touching the names runs the package's lazy imports (torch, pytorch-grad-cam) now, at
        # start-up, rather than inside the first request.
        missing = [name for name in ("compute_cam", "overlay_png") if not hasattr(module, name)]
    except ImportError as err:
        return f"Heat maps are not available: the explanation module cannot be imported ({err})."
    if missing:
        return f"Heat maps are not available: fetalplanes.explain lacks {missing}."
    return None


def check_model_path(path: str | Path) -> str:
    """'onnx' or 'checkpoint' for an existing model file, else a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found; pass a .onnx model or a .ckpt checkpoint")
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    valid = list(ONNX_SUFFIXES + CHECKPOINT_SUFFIXES)
    raise ValueError(f"{path}: unknown model file type {suffix!r}; expected one of {valid}")


def load_backend(path: str | Path, threads: int | None = None) -> Backend:
    """The backend for a model file, chosen by suffix (.onnx or .ckpt/.pt/.pth)."""
    path = Path(path)
    kind = check_model_path(path)
    backend: Backend = OnnxBackend(path, threads) if kind == "onnx" else TorchBackend(path, threads)
    logger.info("serving %s model %s (%s)", backend.kind, backend.spec.name, path)
    return backend
