"""Heat maps for the web service: a Predictor -> an explainer callable (``serve.explainers.Explainer``).

The service does not import this package (doors open downward only); ``fetalplanes serve``
passes :func:`service_explainer` to it. Only the torch backend can be explained: Grad-CAM needs
the model's gradients (or, for occlusion, many forward passes of the torch model), which an
ONNX Runtime session does not expose here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image

from fetalplanes.core.cam_methods import HeatMapSettings
from fetalplanes.explain.maps import compute_map
from fetalplanes.explain.overlay import overlay_png

if TYPE_CHECKING:
    from fetalplanes.models.torch_backend import TorchPredictor
    from fetalplanes.runtime.predictor import Predictor


class CamExplainer:
    """Heat-map overlay (the checkpoint's ``explain`` settings: a CAM or a captum input
    attribution, ``explain.maps``) of the predicted class."""

    def __init__(self, predictor: "TorchPredictor") -> None:
        self.predictor = predictor
        self.method = HeatMapSettings.from_spec(predictor.spec).method

    def __call__(self, image: Image.Image) -> bytes:
        spec = self.predictor.spec
        with self.predictor.lock:  # hooks on the shared model: one request at a time
            result = compute_map(self.predictor.model, spec, image)
        return overlay_png(image, result, spec)


def service_explainer(predictor: "Predictor") -> CamExplainer | str | None:
    """An explainer for a torch Predictor; for another backend None (the service then says why
    there are no heat maps); a sentence when the explanation libraries cannot be imported."""
    if getattr(predictor, "kind", None) != "checkpoint" or not hasattr(predictor, "model"):
        return None
    try:
        # Imported now, at start-up, rather than inside the first request (torch, pytorch-grad-cam).
        import fetalplanes.explain.attribution  # noqa: F401  (captum)
        import fetalplanes.explain.cam  # noqa: F401
    except ImportError as err:
        return f"Heat maps are not available: the explanation module cannot be imported ({err})."
    return CamExplainer(predictor)  # type: ignore[arg-type]  # a checkpoint Predictor is a TorchPredictor
