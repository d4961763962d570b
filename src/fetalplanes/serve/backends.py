"""The model behind the web service: a Predictor (``.onnx`` or ``.ckpt``) and, optionally, heat maps.

The service predicts through the one Predictor interface (``fetalplanes.runtime``), so it
answers exactly like ``fetalplanes predict`` for either kind of file. Heat maps need the
torch model and ``fetalplanes.explain``, a sibling package the service does not import: the
CLI passes an *explainer factory* (``fetalplanes.explain.service_explainer``) that turns a
Predictor into an :class:`Explainer`, or says why it cannot.

Thread safety: request handlers call the model from a thread pool. ONNX Runtime sessions are
safe to run concurrently; the torch backend serialises model use with its lock, which the
explainer holds too (Grad-CAM hooks would otherwise capture a concurrent request's activations).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Protocol, Sequence

from PIL import Image

from fetalplanes.core.postprocess import Prediction
from fetalplanes.core.spec import ModelSpec
from fetalplanes.runtime.artifact import detect_kind
from fetalplanes.runtime.base import BasePredictor, load_predictor

__all__ = ["ExplainUnavailable", "Explainer", "ExplainerFactory", "ServedModel", "check_model_path", "load_backend"]

logger = logging.getLogger(__name__)


class ExplainUnavailable(RuntimeError):
    """This model cannot produce heat maps; the message says why and what to do instead."""


class Explainer(Protocol):
    """Heat-map overlay of the predicted class as PNG bytes, at the image's own size."""

    method: str

    def __call__(self, image: Image.Image) -> bytes: ...


# Predictor -> an Explainer, a sentence saying why there is none, or None (the default reason).
ExplainerFactory = Callable[[BasePredictor], "Explainer | str | None"]


class ServedModel:
    """A loaded Predictor plus its heat-map capability; what the service talks to."""

    def __init__(self, predictor: BasePredictor, explainer: Explainer | str | None = None) -> None:
        self.predictor = predictor
        if explainer is None:
            explainer = _default_reason(predictor)
        self._explainer = None if isinstance(explainer, str) else explainer
        self._reason = explainer if isinstance(explainer, str) else None

    @property
    def kind(self) -> str:
        return self.predictor.kind

    @property
    def spec(self) -> ModelSpec:
        return self.predictor.spec

    @property
    def path(self) -> Path:
        return self.predictor.path

    def predict(self, images: Sequence[Image.Image], k: int = 2) -> list[Prediction]:
        """Calibrated top-k Predictions with the model's abstain threshold."""
        return self.predictor.predict_images(list(images), k) if images else []

    @property
    def explain_unavailable_reason(self) -> str | None:
        """None when :meth:`explain_png` works, else a sentence for the user."""
        return self._reason

    @property
    def explain_method(self) -> str | None:
        return self._explainer.method if self._explainer else None

    def explain_png(self, image: Image.Image) -> bytes:
        if self._explainer is None:
            raise ExplainUnavailable(self._reason or "explanations are not available")
        return self._explainer(image)


def _default_reason(predictor: BasePredictor) -> str:
    if predictor.kind == "onnx":
        return (
            f"Heat maps are not available for plain ONNX models ({predictor.path.name}): Grad-CAM needs the "
            "PyTorch checkpoint. Serve the .ckpt file to get explanations."
        )
    return "Heat maps are not available: the service was started without the explanation module."


def check_model_path(path: str | Path) -> str:
    """'onnx' or 'checkpoint' for a usable model file, else ``ModelFileError`` naming the accepted formats."""
    return detect_kind(path)


def load_backend(path: str | Path, threads: int | None = None, explainer_factory: ExplainerFactory | None = None) -> ServedModel:
    """The served model for a ``.onnx`` or ``.ckpt`` file (heat maps when a factory is given)."""
    predictor = load_predictor(path, threads=threads)
    explainer = explainer_factory(predictor) if explainer_factory else None
    served = ServedModel(predictor, explainer)
    logger.info("serving %s model %s (%s)", served.kind, served.spec.name, path)
    return served
