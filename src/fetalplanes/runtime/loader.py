"""Opening a model file as a Predictor: the kind -> backend table and ``load_predictor(path)``.

Backends, chosen from the file's kind (``runtime.artifact.detect_kind``, by content):

- ``onnx``: :class:`fetalplanes.runtime.onnx_backend.OnnxPredictor` (ONNX Runtime, no torch);
- ``checkpoint``: :class:`fetalplanes.models.torch_backend.TorchPredictor`, available only where
  torch is installed (``pip install fetalplanes[train]``).

The torch backend sits above ``runtime`` (in ``models``) and is named here as a string, imported
only when a checkpoint is opened, so ``runtime`` never imports torch at module level.

Example::

    from fetalplanes.runtime import load_predictor
    p = load_predictor("model.onnx")          # or "best.ckpt"
    p.predict("scan.png")[0].prediction.label  # 'Fetal brain'
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os

from fetalplanes.core.errors import ModelFileError
from fetalplanes.runtime.artifact import KINDS, detect_kind
from fetalplanes.runtime.predictor import Predictor

__all__ = ["available_kinds", "load_predictor"]

log = logging.getLogger(__name__)

# kind -> "module:Class"; the torch backend is importable only where torch is installed.
BACKENDS: dict[str, str] = {
    "onnx": "fetalplanes.runtime.onnx_backend:OnnxPredictor",
    "checkpoint": "fetalplanes.models.torch_backend:TorchPredictor",
}
_NEEDS = {"checkpoint": "torch"}


def available_kinds() -> list[str]:
    """Model-file kinds this installation can run (``checkpoint`` needs torch)."""
    return [k for k in KINDS if k not in _NEEDS or importlib.util.find_spec(_NEEDS[k]) is not None]


def load_predictor(path: str | os.PathLike[str], threads: int | None = None) -> Predictor:
    """The Predictor for a ``.ckpt`` or ``.onnx`` file, chosen by the file's kind.

    ``threads``: intra-op threads of this predictor's model calls (None: the backend's default).
    Raises ``ModelFileError`` (one line naming the file and the accepted formats) for a missing,
    foreign or unreadable file, or a checkpoint where torch is not installed.
    """
    kind = detect_kind(path)
    if kind not in available_kinds():
        raise ModelFileError(
            f"{path}: a PyTorch checkpoint needs torch, which is not installed here; install "
            "`fetalplanes[train]`, or run the ONNX file from `fetalplanes export` (torch-free)"
        )
    module, name = BACKENDS[kind].split(":")
    predictor = getattr(importlib.import_module(module), name)(path, threads=threads)
    log.info("loaded %s", predictor)
    return predictor
