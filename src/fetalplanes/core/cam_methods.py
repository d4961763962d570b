"""THE table of heat-map method names, torch-free: CAMs and input attributions.

Two families, one table, so that the CLI, a training config (``training.config``), a model's
stored explain settings (``explain.settings``), the web service and every error message list
the same valid options:

- ``cam``: class activation maps of a feature map (pytorch-grad-cam; ``explain.cam``);
- ``attribution``: input-pixel attributions (captum; ``explain.attribution``): GradientSHAP
  (Lundberg & Lee 2017, the SHAP family the paper names beside Grad-CAM), Integrated
  Gradients (Sundararajan et al. 2017) and occlusion (Zeiler & Fergus 2014). They explain the
  input, so they take no ``layer``.

The implementations live in ``explain`` (torch); a test keeps this table equal to theirs.
"""

from __future__ import annotations

from fetalplanes.core.errors import UsageError

CAM = "cam"
ATTRIBUTION = "attribution"

# name -> family. 'random' is pytorch-grad-cam's RandomCAM: a control, never a default.
METHOD_FAMILY: dict[str, str] = {
    "gradcam": CAM, "gradcam++": CAM, "hirescam": CAM, "xgradcam": CAM, "layercam": CAM, "eigencam": CAM,
    "eigengradcam": CAM, "gradcam-elementwise": CAM, "scorecam": CAM, "random": CAM,
    "gradientshap": ATTRIBUTION, "integratedgradients": ATTRIBUTION, "occlusion": ATTRIBUTION,
}
METHOD_NAMES: tuple[str, ...] = tuple(METHOD_FAMILY)
CAM_METHOD_NAMES: tuple[str, ...] = tuple(n for n, f in METHOD_FAMILY.items() if f == CAM)
ATTRIBUTION_METHOD_NAMES: tuple[str, ...] = tuple(n for n, f in METHOD_FAMILY.items() if f == ATTRIBUTION)
CONTROL_METHODS: tuple[str, ...] = ("random",)  # shows what chance looks like; never chosen as a default
INPUT_LAYER = "input"  # the 'layer' an attribution method explains

# `explain --compare`'s default set: the CAMs measured in docs/explain.md plus the three captum
# input attributions. Here, not in explain/, so the CLI's help text needs no numpy or Pillow.
COMPARE_CONFIGS = "cam_layer:gradcam;stage:-2:gradcam;stage:-3:layercam;gradientshap;integratedgradients;occlusion"


def check_method(name: str) -> str:
    """``name`` lower-cased if it is a known heat-map method, else UsageError (a ValueError) listing the valid ones."""
    if not isinstance(name, str) or name.lower() not in METHOD_FAMILY:
        raise UsageError(f"unknown heat-map method {name!r}; choose one of {sorted(METHOD_NAMES)}")
    return name.lower()


def method_family(name: str) -> str:
    """'cam' or 'attribution' for a known method (UsageError listing the valid ones otherwise)."""
    return METHOD_FAMILY[check_method(name)]
