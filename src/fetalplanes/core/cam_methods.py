"""THE table of heat-map method names, torch-free: CAMs and input attributions; and THE
schema of a model's heat-map settings (:class:`HeatMapSettings`).

Two families, one table, so that the CLI, a training config (``training.config``), a model's
stored explain settings (``spec.explain``), the web service and every error message list
the same valid options:

- ``cam``: class activation maps of a feature map (pytorch-grad-cam; ``explain.cam``);
- ``attribution``: input-pixel attributions (captum; ``explain.attribution``): GradientSHAP
  (Lundberg & Lee 2017, the SHAP family the paper names beside Grad-CAM), Integrated
  Gradients (Sundararajan et al. 2017) and occlusion (Zeiler & Fergus 2014). They explain the
  input, so they take no ``layer``.

The implementations live in ``explain`` (torch); a test keeps this table equal to theirs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from fetalplanes.core.errors import UsageError

if TYPE_CHECKING:
    from fetalplanes.core.spec import ModelSpec

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


@dataclass(frozen=True)
class HeatMapSettings:
    """Which heat map a model is explained with by default: the ``explain`` section of a training
    config (``training.config.TrainConfig.explain``, validated by pydantic), stored in every
    checkpoint and ONNX file as ``spec.explain`` and read back by ``fetalplanes explain`` and
    the web service (:meth:`from_spec`).

    ``method``: a name of :data:`METHOD_NAMES` (lower-cased; UsageError listing the valid ones
    otherwise). ``layer``: 'cam_layer' (the model's declared CAM layer), 'stage:N', a dotted
    module name or 'a,b' (CAMs only; an attribution method stores :data:`INPUT_LAYER` and
    refuses any other layer). ``aug_smooth``: average over pytorch-grad-cam's test-time
    augmentations (CAMs only; UsageError when set for an attribution). Pick them on the
    VALIDATION split: ``fetalplanes explain --compare --split val`` per training seed, then
    ``explain.selection.select_default`` (docs/explain.md).
    """

    # Read by pydantic when the class is a field of a training config: unknown keys are refused.
    __pydantic_config__ = {"extra": "forbid"}

    method: str = "gradcam"
    layer: str = "cam_layer"
    aug_smooth: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", check_method(self.method))
        if METHOD_FAMILY[self.method] == ATTRIBUTION:
            # An attribution explains the input: a feature-map layer or grad-cam's augmentation
            # smoothing set beside it is a config mistake, said at load time, not ignored.
            if self.layer not in ("cam_layer", INPUT_LAYER):
                raise UsageError(f"layer {self.layer!r} applies to CAM methods only; {self.method!r} "
                                 f"attributes the input pixels (leave the layer out or write {INPUT_LAYER!r})")
            if self.aug_smooth:
                raise UsageError(f"aug_smooth applies to CAM methods only, not to {self.method!r}")
            object.__setattr__(self, "layer", INPUT_LAYER)  # what is stored says what is explained

    @classmethod
    def from_spec(cls, spec: ModelSpec | Any) -> HeatMapSettings:
        """A model's settings (``spec.explain``); defaults (Grad-CAM at ``cam_layer``) for a file
        written before the section existed. A file written before attributions refused CAM
        options (e.g. GradientSHAP beside the demo's ``stage:-2``) loads as the attribution:
        those options were ignored then too."""
        # Spec format 1.0 kept the section in the training summary; ModelSpec.from_dict migrates it.
        section = getattr(spec, "explain", None) or ((getattr(spec, "training", None) or {}).get("explain")) or {}
        default = cls()
        method = check_method(str(section.get("method") or default.method))
        if METHOD_FAMILY[method] == ATTRIBUTION:
            return cls(method=method)
        return cls(method=method, layer=str(section.get("layer") or default.layer),
                   aug_smooth=bool(section.get("aug_smooth", default.aug_smooth)))

    @property
    def cam_layer(self) -> str:
        """The layer a CAM method explains by default: the stored one, or 'cam_layer' (the model's
        declared CAM layer) when the stored method is an attribution (its layer is the input)."""
        return "cam_layer" if self.layer == INPUT_LAYER else self.layer

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored as ``spec.explain``."""
        return asdict(self)
