"""The one Predictor interface, and the torch-free edge runtime.

``load_predictor(path)`` opens a ``.onnx`` export (ONNX Runtime, numpy, Pillow, pydicom: no
torch) or a training ``.ckpt`` (torch backend, registered only where torch is installed) behind
the same :class:`Predictor` interface. Install the edge part with ``pip install
fetalplanes[runtime]``; nothing here (or in ``fetalplanes.core``) imports torch at import time.

Names are resolved lazily, so ``import fetalplanes.runtime`` stays cheap.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ACCEPTED": "fetalplanes.runtime.artifact",
    "ModelFileError": "fetalplanes.runtime.artifact",
    "detect_kind": "fetalplanes.runtime.artifact",
    "read_spec": "fetalplanes.runtime.artifact",
    "BasePredictor": "fetalplanes.runtime.base",
    "FileResult": "fetalplanes.runtime.base",
    "Predictor": "fetalplanes.runtime.base",
    "available_kinds": "fetalplanes.runtime.base",
    "load_predictor": "fetalplanes.runtime.base",
    "OnnxPredictor": "fetalplanes.runtime.predictor",
    "RuntimeModelError": "fetalplanes.runtime.predictor",
    "load_spec": "fetalplanes.runtime.predictor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fetalplanes.runtime' has no attribute {name!r}")
