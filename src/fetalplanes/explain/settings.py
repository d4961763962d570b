"""Which heat map a model is explained with by default: the ``explain`` section of its config.

The setting travels inside every checkpoint and ONNX file (``spec.explain``), so ``fetalplanes
explain`` and the web service use the layer and method that were chosen for that model, on
its validation split, with ``benchmarks/bench_localization.py`` (see docs/explain.md).
Checkpoints written before the section existed fall back to Grad-CAM at the declared
``cam_layer``. Torch-free, so the service can read it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Re-exported: the names live in core so a training config can check them without this layer.
from fetalplanes.core.cam_methods import CAM_METHOD_NAMES, METHOD_NAMES, check_method

__all__ = ["CAM_METHOD_NAMES", "METHOD_NAMES", "CamSettings", "cam_settings", "check_method"]


@dataclass(frozen=True)
class CamSettings:
    method: str = "gradcam"
    layer: str = "cam_layer"  # 'cam_layer' | 'stage:N' | dotted module name | 'a,b'
    aug_smooth: bool = False


def cam_settings(spec: Any) -> CamSettings:
    """The checkpoint's default CAM settings (``explain`` section of its resolved config)."""
    # Spec format 1.0 kept the section in the training summary; ModelSpec.from_dict migrates it.
    section = getattr(spec, "explain", None) or ((getattr(spec, "training", None) or {}).get("explain")) or {}
    default = CamSettings()
    return CamSettings(
        method=str(section.get("method") or default.method).lower(),
        layer=str(section.get("layer") or default.layer),
        aug_smooth=bool(section.get("aug_smooth", default.aug_smooth)),
    )
