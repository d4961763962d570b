"""CamResult: one image's explanation (heat map + the prediction it explains).

Kept free of torch so the web service and the torch-free runtime can pass results around,
draw overlays and score them without importing the deep-learning stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class CamResult:
    """A class activation map and the prediction it explains.

    ``cam`` is float32 (H, W) in [0, 1] at the ORIGINAL image size (PIL ``size[::-1]``),
    ``probs`` the calibrated class probabilities (C,), ``label``/``confidence`` the top-1
    prediction, ``target`` the class whose evidence the map shows and ``method`` the CAM
    method name (a key of ``METHODS``, or ``'occlusion'``).
    """

    cam: np.ndarray
    probs: np.ndarray
    label: str
    confidence: float
    target: str
    method: str
    extra: dict[str, Any] = field(default_factory=dict)

    def topk(self, class_names: tuple[str, ...] | list[str], k: int = 2) -> list[tuple[str, float]]:
        """The ``k`` most probable classes as (name, probability), best first."""
        order = np.argsort(-np.asarray(self.probs), kind="stable")[: max(1, k)]
        return [(class_names[i], float(self.probs[i])) for i in order]

    def summary(self, class_names: tuple[str, ...] | list[str], k: int = 2) -> dict[str, Any]:
        """JSON-ready description (no pixel data)."""
        return {
            "label": self.label,
            "confidence": float(self.confidence),
            "target": self.target,
            "method": self.method,
            "topk": [{"label": c, "probability": p} for c, p in self.topk(class_names, k)],
            "cam_shape": list(self.cam.shape),
            **self.extra,
        }
