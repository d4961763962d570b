"""One entry point for every heat-map method of ``core.cam_methods``: CAMs and input attributions.

The pipeline, the sanity checks, the comparison and the web service call :func:`compute_map`
so that a method name means the same map everywhere.
"""

from __future__ import annotations

from typing import Sequence

from PIL import Image

from fetalplanes.core.cam_methods import ATTRIBUTION, INPUT_LAYER, HeatMapSettings, method_family
from fetalplanes.core.errors import UsageError
from fetalplanes.explain.result import CamResult


def check_options(method: str, layer: str | None, aug_smooth: bool | None) -> None:
    """UsageError when an explicit ``layer`` or ``aug_smooth`` is given to an attribution method.

    Attribution methods explain the input pixels: a feature-map layer and pytorch-grad-cam's
    augmentation smoothing do not apply to them.
    """
    if method_family(method) != ATTRIBUTION:
        return
    if layer not in (None, INPUT_LAYER):
        raise UsageError(f"--layer {layer!r} applies to CAM methods only; {method!r} attributes the input pixels")
    if aug_smooth:
        raise UsageError(f"--aug-smooth applies to CAM methods only, not to {method!r}")


def compute_map(model, spec, image: Image.Image, method: str | None = None, target: str | int | None = None, *,
                layer: str | Sequence | None = None, aug_smooth: bool | None = None, seed: int = 0) -> CamResult:
    """The heat map of ``method`` (None: the checkpoint's setting) for one image, at its own size.

    CAM methods: ``explain.cam.compute_cam`` (``layer``, ``aug_smooth``: None takes the
    checkpoint's setting). Attribution methods: ``explain.attribution.compute_attribution``
    (``layer``/``aug_smooth`` from the checkpoint are ignored; explicit ones are refused by
    :func:`check_options`). Raises UsageError listing the valid methods for an unknown name.
    """
    method = (method or HeatMapSettings.from_spec(spec).method).lower()
    if method_family(method) == ATTRIBUTION:
        from fetalplanes.explain.attribution import compute_attribution

        return compute_attribution(model, spec, image, method, target, seed=seed)
    from fetalplanes.explain.cam import compute_cam

    return compute_cam(model, spec, image, method, target, layer=layer, aug_smooth=aug_smooth)
