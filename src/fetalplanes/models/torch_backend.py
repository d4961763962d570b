"""TorchPredictor: the ``checkpoint`` backend of :class:`fetalplanes.runtime.Predictor`.

Runs a training checkpoint (``.ckpt``, either training path) with PyTorch on the CPU (or a GPU
when asked), behind the same interface as the ONNX backend: decoding, preprocessing,
temperature, top-k and abstain come from the base class; this file holds only the model call.
``model`` is the torch module itself, for Grad-CAM (``fetalplanes.explain``).

Thread safety: calls are serialised with ``lock`` (Grad-CAM registers hooks on the shared
model, which would capture the activations of a concurrent request); the web service holds
the same lock while it computes a heat map.

Threads: torch's intra-op thread count is process-wide, so ``threads`` is applied only around
this predictor's own model calls (set, run, restore, under ``lock``); the rest of the process
keeps its count. Without ``threads`` the caller's setting is used.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from fetalplanes.core.spec import ModelSpec
from fetalplanes.models.checkpoint import model_from_checkpoint, ood_blob, read_checkpoint, spec_of
from fetalplanes.runtime.predictor import Predictor
from fetalplanes.runtime.threads import check_threads

__all__ = ["TorchPredictor"]

log = logging.getLogger(__name__)


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside the block and restored after it."""
    before = torch.get_num_threads()
    if not threads or int(threads) == before:
        yield
        return
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TorchPredictor(Predictor):
    """A fetalplanes checkpoint run with PyTorch (eval mode, channels_last, inference mode)."""

    kind = "checkpoint"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, device: str = "cpu") -> None:
        ckpt = read_checkpoint(path)
        spec = spec_of(ckpt, str(path))
        model = model_from_checkpoint(ckpt, spec, str(path))
        self._setup(model, spec, path, device, True, threads, ood_blob(ckpt))

    @classmethod
    def from_model(cls, model: torch.nn.Module, spec: ModelSpec, path: str | os.PathLike[str] = "<in memory>",
                   device: str = "cpu", channels_last: bool = True, threads: int | None = None,
                   ood_stats_blob: str | None = None) -> "TorchPredictor":
        """A Predictor around a model already in memory (after training, for export parity, or in
        ``bench``, which also times the NCHW layout with ``channels_last=False``). Without
        ``ood_stats_blob`` the OOD gate is left out (the spec's ``ood`` section is dropped)."""
        self = cls.__new__(cls)
        if ood_stats_blob is None and spec.has_ood_gate:
            spec = spec.replace(ood={})
        self._setup(model, spec, path, device, channels_last, threads, ood_stats_blob)
        return self

    def _setup(self, model: torch.nn.Module, spec: ModelSpec, path: str | os.PathLike[str], device: str,
               channels_last: bool, threads: int | None, blob: str | None = None) -> None:
        super().__init__(path, spec, blob)
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, memory_format=self.memory_format)
        self.lock = threading.RLock()
        self.threads = check_threads(int(threads)) if threads else None  # torch takes a C int
        if self.threads:
            log.info("%s: %d torch intra-op thread(s) during its own calls (the process keeps %d)",
                     self.path, self.threads, torch.get_num_threads())
        else:
            log.debug("%s: torch threads left to the caller (%d)", self.path, torch.get_num_threads())

    def _run(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).to(self.device).contiguous(memory_format=self.memory_format)
        with self.lock, intra_op_threads(self.threads), torch.inference_mode():
            return self.model(t).float().cpu().numpy()

    def _run_features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = torch.from_numpy(x).to(self.device).contiguous(memory_format=self.memory_format)
        with self.lock, intra_op_threads(self.threads), torch.inference_mode():
            logits, feats = self.model.forward_with_features(t)
        return logits.float().cpu().numpy(), feats.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": str(self.device), "torch": str(torch.__version__),
                "threads": self.threads}
