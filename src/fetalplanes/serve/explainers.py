"""Heat maps for the web service: the one capability the service adds to a Predictor.

The service predicts through :class:`fetalplanes.runtime.Predictor` directly, so it answers
exactly like ``fetalplanes predict`` for either kind of model file. Heat maps need the torch
model and ``fetalplanes.explain``, a sibling package the service does not import: the CLI
passes an *explainer factory* (``fetalplanes.explain.service_explainer``) that turns a
Predictor into an :class:`Explainer`, or a sentence saying why it cannot.

Thread safety: request handlers call the model from a thread pool. ONNX Runtime sessions are
safe to run concurrently; the torch backend serialises model use with its lock, which the
explainer holds too (Grad-CAM hooks would otherwise capture a concurrent request's activations).
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

from PIL import Image

from fetalplanes.runtime.predictor import Predictor

__all__ = ["ExplainUnavailable", "Explainer", "ExplainerFactory", "HeatMaps"]

logger = logging.getLogger(__name__)


class ExplainUnavailable(RuntimeError):
    """This model cannot produce heat maps; the message says why and what to do instead."""


class Explainer(Protocol):
    """Heat-map overlay of the predicted class as PNG bytes, at the image's own size."""

    method: str

    def __call__(self, image: Image.Image) -> bytes: ...


# Predictor -> an Explainer, a sentence saying why there is none, or None (the default reason).
ExplainerFactory = Callable[[Predictor], "Explainer | str | None"]


class HeatMaps:
    """The served model's heat maps: an explainer, or the sentence saying why there is none."""

    def __init__(self, predictor: Predictor, factory: ExplainerFactory | None = None) -> None:
        made = factory(predictor) if factory else None
        if made is None:
            made = _default_reason(predictor)
        self._explainer = None if isinstance(made, str) else made
        self.unavailable_reason: str | None = made if isinstance(made, str) else None
        logger.info("heat maps: %s", self.method or self.unavailable_reason)

    @property
    def method(self) -> str | None:
        return self._explainer.method if self._explainer else None

    def png(self, image: Image.Image) -> bytes:
        """The overlay PNG; ``ExplainUnavailable`` with the reason when there are no heat maps."""
        if self._explainer is None:
            raise ExplainUnavailable(self.unavailable_reason or "explanations are not available")
        return self._explainer(image)


def _default_reason(predictor: Predictor) -> str:
    if predictor.kind == "onnx":
        return (
            f"Heat maps are not available for plain ONNX models ({predictor.path.name}): Grad-CAM needs the "
            "PyTorch checkpoint. Serve the .ckpt file to get explanations."
        )
    return "Heat maps are not available: the service was started without the explanation module."
