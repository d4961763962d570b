"""Names of the class-activation-map (CAM) methods, torch-free.

The heat-map methods themselves live in ``fetalplanes.explain.cam`` (pytorch-grad-cam, torch).
Their names live here, one layer lower, so that a training config (``training.config``) and a
model's stored explain settings (``explain.settings``) can be checked when they are read,
without importing torch or reaching up into ``explain``. A test keeps this tuple equal to
``explain.cam.METHODS``.
"""

from __future__ import annotations

from fetalplanes.core.errors import UsageError

METHOD_NAMES: tuple[str, ...] = (
    "gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam", "eigengradcam",
    "gradcam-elementwise", "scorecam", "random",
)


def check_method(name: str) -> str:
    """``name`` lower-cased if it is a known CAM method, else UsageError (a ValueError) listing the valid ones."""
    if not isinstance(name, str) or name.lower() not in METHOD_NAMES:
        raise UsageError(f"unknown CAM method {name!r}; choose one of {sorted(METHOD_NAMES)}")
    return name.lower()
