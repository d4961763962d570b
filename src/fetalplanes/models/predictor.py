"""TorchPredictor: the ``checkpoint`` backend of the Predictor interface (``fetalplanes.runtime``).

Runs a training checkpoint (``.ckpt``, either training path) with PyTorch on the CPU (or a GPU
when asked), behind the same interface as the ONNX backend: decoding, preprocessing,
temperature, top-k and abstain come from :class:`fetalplanes.runtime.base.BasePredictor`.
``model`` is the torch module itself, for Grad-CAM (``fetalplanes.explain``).

Thread safety: calls are serialised with ``lock`` (Grad-CAM registers hooks on the shared
model, which would capture the activations of a concurrent request); the web service holds
the same lock while it computes a heat map.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import torch

from fetalplanes.core.spec import ModelSpec
from fetalplanes.models.checkpoint import load_model
from fetalplanes.core.predictor import BasePredictor


class TorchPredictor(BasePredictor):
    """A fetalplanes checkpoint run with PyTorch (eval mode, channels_last, inference mode)."""

    kind = "checkpoint"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, device: str = "cpu") -> None:
        if threads:
            torch.set_num_threads(int(threads))
        self.path = Path(path)
        model, self.spec = load_model(self.path)
        self.device = torch.device(device)
        self.memory_format = torch.channels_last
        self.model = model.eval().to(self.device, memory_format=self.memory_format)
        self.lock = threading.RLock()

    @classmethod
    def from_model(cls, model: torch.nn.Module, spec: ModelSpec, path: str | os.PathLike[str] = "<in memory>",
                   device: str = "cpu", channels_last: bool = True) -> "TorchPredictor":
        """A Predictor around a model already in memory (after training, for export parity, or in
        ``bench``, which also times the NCHW layout with ``channels_last=False``)."""
        self = cls.__new__(cls)
        self.path, self.spec, self.device = Path(path), spec, torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, memory_format=self.memory_format)
        self.lock = threading.RLock()
        return self

    def predict_arrays(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed batch (N, 3, S, S) float32 -> logits (N, C) float32."""
        x = self.check_batch(x)
        if len(x) == 0:
            return np.zeros((0, self.spec.num_classes), dtype=np.float32)
        t = torch.from_numpy(x).to(self.device).contiguous(memory_format=self.memory_format)
        with self.lock, torch.inference_mode():
            return self.model(t).float().cpu().numpy()

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "device": str(self.device), "torch": str(torch.__version__)}
