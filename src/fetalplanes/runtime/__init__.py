"""The whole Predictor, torch-free: interface and batching, the loader by file kind, the ONNX backend.

``load_predictor(path)`` opens a ``.onnx`` export (ONNX Runtime, numpy, Pillow, pydicom: no
torch) or a training ``.ckpt`` (torch backend ``models.torch_backend``, available only where
torch is installed) as a :class:`Predictor`::

    from fetalplanes.runtime import load_predictor
    results = load_predictor("model.onnx").predict(["scan.png", "cine.dcm"])

Files: ``predictor`` (the interface, :class:`FileResult`), ``loader`` (kind -> backend),
``onnx_backend``, ``session`` (ORT sessions), ``artifact`` (model files and their spec).
Install the edge part with ``pip install fetalplanes[runtime]``; nothing here imports torch.
Names are resolved on first use, so ``import fetalplanes.runtime`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ACCEPTED": "fetalplanes.runtime.artifact",
    "ModelFileError": "fetalplanes.core.errors",
    "detect_kind": "fetalplanes.runtime.artifact",
    "read_spec": "fetalplanes.runtime.artifact",
    "DEFAULT_BATCH": "fetalplanes.runtime.predictor",
    "FileResult": "fetalplanes.runtime.predictor",
    "Predictor": "fetalplanes.runtime.predictor",
    "available_kinds": "fetalplanes.runtime.loader",
    "load_predictor": "fetalplanes.runtime.loader",
    "OnnxPredictor": "fetalplanes.runtime.onnx_backend",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fetalplanes.runtime' has no attribute {name!r}")
