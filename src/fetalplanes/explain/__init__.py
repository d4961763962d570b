"""Explanations clinicians can check: CAM heat maps and input attributions, overlays, localization
scores, HTML report.

Public API (used by the CLI and the web service)::

    from fetalplanes.explain import CamResult, compute_map, overlay, overlay_png, METHODS
    result = compute_map(model, spec, pil_image)  # the checkpoint's explain settings, CAM or attribution
    png = overlay_png(pil_image, result, spec)

``CamResult`` and the overlay functions are torch-free; ``compute_cam``, ``METHODS``,
``compute_occlusion``, ``compute_attribution`` (captum) and ``compute_map`` (any method of
``core.cam_methods``) import torch on first use (PEP 562 lazy attributes), so importing this
package stays cheap.
"""

from __future__ import annotations

from typing import Any

from fetalplanes.explain.overlay import overlay, overlay_png
from fetalplanes.explain.result import CamResult

_LAZY = {
    "compute_cam": "fetalplanes.explain.cam",
    "METHODS": "fetalplanes.explain.cam",
    "get_method": "fetalplanes.explain.cam",
    "compute_occlusion": "fetalplanes.explain.occlusion",
    "compute_attribution": "fetalplanes.explain.attribution",
    "compute_map": "fetalplanes.explain.maps",
    "explain": "fetalplanes.explain.pipeline",
    "service_explainer": "fetalplanes.explain.service",
}

__all__ = ["CamResult", "METHODS", "compute_attribution", "compute_cam", "compute_map", "compute_occlusion", "explain", "get_method", "overlay", "overlay_png",
           "service_explainer"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fetalplanes.explain' has no attribute {name!r}")
