"""Opening a model file as a Predictor: ``load_predictor(path)`` for a ``.ckpt`` or an ``.onnx``.

The interface itself (:class:`Predictor`, :class:`BasePredictor`, :class:`FileResult`) is defined
torch-free in ``fetalplanes.core.predictor`` and re-exported here. Backends, chosen by :func:`load_predictor` from the file's kind (``runtime.artifact``):

- ``onnx``: :class:`fetalplanes.runtime.predictor.OnnxPredictor` (ONNX Runtime, no torch);
- ``checkpoint``: :class:`fetalplanes.models.predictor.TorchPredictor`, registered only when torch
  can be imported (``pip install fetalplanes[train]``).

Example::

    from fetalplanes.runtime import load_predictor
    p = load_predictor("model.onnx")          # or "best.ckpt"
    p.predict("scan.png").label               # 'Fetal brain'
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from typing import Any

from fetalplanes.core.predictor import DEFAULT_BATCH, BasePredictor, FileResult, ImageInput, Predictor, expand_inputs
from fetalplanes.runtime.artifact import ACCEPTED, KINDS, ModelFileError, detect_kind

log = logging.getLogger(__name__)

# kind -> "module:Class"; the torch backend is importable only where torch is installed.
_BACKENDS: dict[str, str] = {
    "onnx": "fetalplanes.runtime.predictor:OnnxPredictor",
    "checkpoint": "fetalplanes.models.predictor:TorchPredictor",
}
_NEEDS = {"checkpoint": "torch"}


def available_kinds() -> list[str]:
    """Model-file kinds this installation can run (``checkpoint`` needs torch)."""
    return [k for k in KINDS if k not in _NEEDS or importlib.util.find_spec(_NEEDS[k]) is not None]


def load_predictor(path: str | os.PathLike[str], threads: int | None = None, **options: Any) -> BasePredictor:
    """The Predictor for a ``.ckpt`` or ``.onnx`` file, chosen by the file's kind.

    Raises ``ModelFileError`` (one line naming the file and the accepted formats) for a missing,
    foreign or unreadable file, or a checkpoint where torch is not installed.
    """
    kind = detect_kind(path)
    if kind not in available_kinds():
        raise ModelFileError(
            f"{path}: a PyTorch checkpoint needs torch, which is not installed here; install "
            "`fetalplanes[train]`, or run the ONNX file from `fetalplanes export` (torch-free)"
        )
    module, name = _BACKENDS[kind].split(":")
    predictor = getattr(importlib.import_module(module), name)(path, threads=threads, **options)
    log.info("loaded %s", predictor)
    return predictor


__all__ = ["ACCEPTED", "DEFAULT_BATCH", "BasePredictor", "FileResult", "ImageInput", "Predictor", "available_kinds",
           "expand_inputs", "load_predictor"]
