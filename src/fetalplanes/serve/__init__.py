"""Web service and clinician page (FastAPI): ``create_app(model)``; run with ``fetalplanes serve``.

Needs the ``serve`` extra (fastapi, uvicorn, python-multipart, onnxruntime); torch is only
needed to serve a training checkpoint.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: importing fetalplanes.serve.explainers or .settings alone must not pull in FastAPI.
    if name == "create_app":
        from fetalplanes.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'fetalplanes.serve' has no attribute {name!r}")
