"""The service's synchronous work: check and decode uploads, predict, explain, describe the model.

Called from the request handlers through a thread pool, so CPU-bound decoding and inference
never block the event loop. The service decodes each upload itself (its own pixel limit, and
the decoded image is what the preview and the heat map show), then asks the
:class:`~fetalplanes.runtime.Predictor` for every readable one in one call. Every refusal is an
:class:`UploadError` carrying the HTTP status (415 unsupported type, 422 unreadable image or
no answer) and a sentence naming the file; in a batch each item carries its own.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from fetalplanes.core.errors import EXPECTED
from fetalplanes.core.formats import accepted_images, format_named
from fetalplanes.core.io import ImageLoadError, load_image, sniff_format
from fetalplanes.core.limits import BudgetExceeded, PixelBudget
from fetalplanes.core.postprocess import Prediction
from fetalplanes.core.preprocess import to_gray
from fetalplanes.core.encode import png_bytes
from fetalplanes.runtime.predictor import FileResult, Predictor
from fetalplanes.serve.explainers import ExplainUnavailable, HeatMaps
from fetalplanes.serve.schemas import (
    BatchItem,
    BatchResponse,
    CineAnswer,
    ClassProbability,
    Explanation,
    FrameAnswer,
    ImageInfo,
    ModelInfo,
    OODInfo,
    ModelRef,
    PredictResponse,
    PreprocessingInfo,
    ServiceLimits,
)
from fetalplanes.serve.settings import ServeSettings
from fetalplanes.serve.uploads import Upload, UploadError

__all__ = ["ACCEPTED_FORMATS", "Service", "read_model_card"]

logger = logging.getLogger(__name__)

# The one format table (core.formats.FORMATS): what the CLI reads, the service accepts.
ACCEPTED_FORMATS: tuple[str, ...] = tuple(f.name for f in accepted_images())
MAX_SIDE_FILE_BYTES = 1024 * 1024  # metrics.json / MODEL_CARD.md larger than this are not served
MAX_CINE_FRAMES = 600
"""Most frames of one upload answered (a 20 s loop at 30 fps); the answer says when it stops early."""
_CINE_CHUNK = 16  # frames per model call: memory holds a chunk of decoded frames, not the loop
_MULTI_FRAME_FORMATS = ("dicom", "tiff")


class Service:
    """A loaded Predictor, its heat maps and the service limits; one per app."""

    def __init__(self, predictor: Predictor, settings: ServeSettings, heatmaps: HeatMaps | None = None) -> None:
        self.predictor = predictor
        self.spec = predictor.spec
        self.settings = settings
        self.heatmaps = heatmaps or HeatMaps(predictor)
        self._metrics, self._card = read_model_card(predictor.path, self.spec.metrics)
        self._model_ref = ModelRef(name=self.spec.name, version=self.spec.version, kind=predictor.kind)

    # ------------------------------------------------------------------ uploads

    def decode(self, upload: Upload, budget: PixelBudget | None = None) -> tuple[Image.Image, str]:
        """The decoded image and its detected format, or UploadError 415/422 (413 when the request's
        decoded-pixel ``budget`` is spent)."""
        name = upload.filename or "upload"
        if not upload.data:
            raise UploadError(422, f"{name}: empty file (0 bytes); expected {EXPECTED}")
        fmt = sniff_format(bytes(upload.data[:132]))
        if fmt not in ACCEPTED_FORMATS:
            found = format_named(fmt).refusal if fmt else "not a recognised image format"
            raise UploadError(415, f"{name}: unsupported file type ({found}); expected {EXPECTED}")
        try:
            image = load_image(bytes(upload.data), name=name, max_pixels=self.settings.max_pixels, budget=budget)
        except BudgetExceeded as err:
            raise UploadError(413, str(err)) from None
        except ImageLoadError as err:
            raise UploadError(422, str(err)) from None
        return image, fmt

    def budget(self) -> PixelBudget:
        """A fresh decoded-pixel budget for one request (``ServeSettings.request_pixels``)."""
        return PixelBudget(self.settings.request_pixels)

    def analyse(self, upload: Upload, top_k: int, explain: bool, preview: bool) -> PredictResponse:
        """One upload's answer, or its UploadError (415/422, 413 over the request's pixel budget)."""
        answer = self._answers([upload], top_k, explain, preview)[0]
        if isinstance(answer, UploadError):
            raise answer
        return answer

    def analyse_batch(self, uploads: list[Upload], top_k: int, explain: bool, preview: bool) -> BatchResponse:
        """Per-item results: one bad file does not spoil the others' answers."""
        items = [
            BatchItem(filename=u.filename, status=a.status, error=a.detail) if isinstance(a, UploadError)
            else BatchItem(filename=u.filename, status=200, result=a)
            for u, a in zip(uploads, self._answers(uploads, top_k, explain, preview))
        ]
        failed = sum(item.status != 200 for item in items)
        return BatchResponse(count=len(items), failed=failed, items=items)

    def _answers(self, uploads: list[Upload], top_k: int, explain: bool,
                 preview: bool) -> list[PredictResponse | UploadError]:
        """Each upload's response or UploadError, in order. Uploads are decoded and answered one at
        a time (one decoded image in memory at once), all charged to one decoded-pixel budget per
        request (``ServeSettings.request_pixels``): the items past it are refused by name (413).
        A cine is answered frame by frame, never as its first frame alone; its frames are decoded
        and answered in chunks of ``_CINE_CHUNK`` and released, so its memory stays bounded."""
        budget = self.budget()
        out: list[PredictResponse | UploadError] = []
        for upload in uploads:
            try:
                reader = self._frame_reader(upload, budget)
                if reader is not None and (reader.info.get("frames_declared") or 1) > 1:
                    out.append(self._analyse_cine(upload, reader, top_k, explain, preview))
                    continue
                # a single frame from the header the reader already parsed, else decode() parses it
                image, fmt = self._first_frame(upload, reader) if reader is not None else self.decode(upload, budget)
            except UploadError as err:
                out.append(err)
                continue
            result = self.predictor.predict([image], top_k)[0]
            out.append(self._response(upload, image, fmt, result, explain, preview) if result.ok
                       else _predict_error(upload, result))
            del image  # released before the next item is decoded
        return out

    def _frame_reader(self, upload: Upload, budget: PixelBudget) -> Any:
        """A FrameReader for a DICOM or TIFF upload (its header parsed once, here), else None (another
        format, or a header that cannot be read: decode() reports it as for any image); its frames
        are charged to the request's ``budget`` like every other decoded image."""
        from fetalplanes.core.frames import open_frames

        if not upload.data or sniff_format(bytes(upload.data[:132])) not in _MULTI_FRAME_FORMATS:
            return None
        try:
            reader = open_frames(bytes(upload.data), name=upload.filename or "upload", max_pixels=self.settings.max_pixels,
                                 budget=budget)
        except ImageLoadError:
            return None  # decode() reports it, the same way as for any single image
        return reader

    def _first_frame(self, upload: Upload, reader: Any) -> tuple[Image.Image, str]:
        """The single frame of a DICOM/TIFF upload from ``reader``, as decode() would give it."""
        try:
            image = reader.first_image()
        except BudgetExceeded as err:
            raise UploadError(413, str(err)) from None
        except ImageLoadError as err:
            raise UploadError(422, str(err)) from None
        return image, sniff_format(bytes(upload.data[:132])) or "dicom"

    def _analyse_cine(self, upload: Upload, reader: Any, top_k: int, explain: bool, preview: bool) -> PredictResponse:
        """Every frame answered (up to MAX_CINE_FRAMES, in chunks); the top-level answer is the most
        confident frame that got a plane (:func:`_rank`), and the answer says so (``cine.answered_frame``)."""
        answers: list[FrameAnswer] = []
        best: tuple[FileResult, Image.Image, int] | None = None
        chunk: list[Any] = []
        note = None

        def flush() -> None:
            nonlocal best
            for frame, r in zip(chunk, self.predictor.predict([f.image for f in chunk], top_k) if chunk else []):
                if r.prediction is None:
                    reader.skipped.append(ImageLoadError(reader.label, r.error or "no answer", frame=frame.index))
                    continue
                p = r.prediction
                answers.append(FrameAnswer(frame=frame.index, time_s=frame.time_s, state=p.state, plane=p.plane, nearest_plane=p.nearest_plane,
                                           confidence=p.confidence, abstain=p.abstain))
                if best is None or _rank(p) > _rank(best[0].prediction):  # type: ignore[arg-type]
                    best = (r, frame.image, frame.index)
            chunk.clear()

        try:
            for frame in reader:
                if len(answers) + len(chunk) >= MAX_CINE_FRAMES:
                    note = f"only the first {MAX_CINE_FRAMES} frames are answered by the service; use `fetalplanes stream`"
                    break
                chunk.append(frame)
                if len(chunk) >= _CINE_CHUNK:
                    flush()
            flush()
        except BudgetExceeded as err:  # the request's decoded-pixel budget is spent: answer what was read
            flush()
            if not answers:
                raise UploadError(413, str(err)) from None
            note = f"only {len(answers)} frame(s) answered: {err}"
        except ImageLoadError as err:  # no frame could be decoded at all
            raise UploadError(422, str(err)) from None
        if best is None:
            raise UploadError(422, f"{upload.filename or 'upload'}: no frame could be answered")
        note = note or (f"short read: {reader.info['short_read']}" if reader.info.get("short_read") else None)
        fmt = sniff_format(bytes(upload.data[:132])) or "dicom"
        response = self._response(upload, best[1], fmt, best[0], explain, preview)
        response.cine = CineAnswer(
            frames_declared=int(reader.info.get("frames_declared") or len(answers)), frames_answered=len(answers),
            answered_frame=best[2], frames=answers, best_per_plane=_best_per_plane(answers),
            skipped=[str(e) for e in reader.skipped], note=note)
        return response

    def _response(
        self, upload: Upload, image: Image.Image, fmt: str, result: FileResult, explain: bool, preview: bool
    ) -> PredictResponse:
        prediction: Prediction = result.prediction  # type: ignore[assignment]  # only ok results get here
        return PredictResponse(
            filename=upload.filename,
            state=prediction.state,
            ood=OODInfo(**prediction.to_dict()["ood"]),
            plane=prediction.plane,
            nearest_plane=prediction.nearest_plane,
            confidence=prediction.confidence,
            abstain=prediction.abstain,
            abstain_threshold=self.spec.abstain_threshold,
            topk=[ClassProbability(label=c, probability=p) for c, p in prediction.topk],
            probabilities=prediction.probabilities,
            model=self._model_ref,
            image=ImageInfo(width=image.width, height=image.height, format=fmt, mode=image.mode),
            explanation=self._explain(image) if explain else None,
            # PNG level 1 for previews: speed over size, sent once and never stored.
            preview_png_base64=_b64(png_bytes(_displayable(image), compress_level=1)) if preview else None,
        )

    def _explain(self, image: Image.Image) -> Explanation:
        try:
            png = self.heatmaps.png(image)
        except ExplainUnavailable as err:
            return Explanation(available=False, detail=str(err))
        return Explanation(available=True, method=self.heatmaps.method, overlay_png_base64=_b64(png))

    # ------------------------------------------------------------------ model

    def model_info(self) -> ModelInfo:
        spec, pre, limits = self.spec, self.spec.preprocessing, self.settings
        reason = self.heatmaps.unavailable_reason
        return ModelInfo(
            name=spec.name,
            version=spec.version,
            kind=self.predictor.kind,
            task=spec.task,
            class_names=list(spec.class_names),
            preprocessing=PreprocessingInfo(
                image_size=pre.image_size, mean=list(pre.mean), std=list(pre.std), channels=pre.channels, resize=pre.resize
            ),
            temperature=spec.temperature,
            abstain_threshold=spec.abstain_threshold,
            ood_gate={k: v for k, v in spec.ood.items() if k != "stats_sha256"} if spec.has_ood_gate else {},
            explain_available=reason is None,
            explain_detail=reason,
            metrics=self._metrics,
            model_card=self._card,
            limits=ServiceLimits(
                max_upload_bytes=limits.max_upload_bytes,
                max_batch=limits.max_batch,
                max_pixels=limits.max_pixels,
                accepted_formats=list(ACCEPTED_FORMATS),
            ),
        )


_STATE_RANK = {"plane": 2, "abstain": 1, "out_of_distribution": 0}


def _rank(prediction: Prediction) -> tuple[int, float]:
    """A frame's claim to be the cine's answer: a plane beats an abstention beats "not a fetal plane",
    then the higher confidence (a confident out-of-distribution frame must not hide a good one)."""
    return _STATE_RANK[prediction.state], prediction.confidence


def _best_per_plane(answers: list[FrameAnswer]) -> list[FrameAnswer]:
    """The most confident frame of each plane among frames in state ``plane``, in frame order:
    ``stream``'s choice (an abstaining or out-of-distribution frame is never a best frame)."""
    best: dict[str, FrameAnswer] = {}
    for a in answers:
        if a.state != "plane":
            continue
        if a.plane not in best or a.confidence > best[a.plane].confidence:
            best[a.plane] = a
    return sorted(best.values(), key=lambda a: a.frame)


def _predict_error(upload: Upload, result: FileResult) -> UploadError:
    """A decoded upload the Predictor could not answer: 422, its one-line reason under the upload's name."""
    reason = (result.error or "no answer").split(": ", 1)[-1]
    return UploadError(422, f"{upload.filename or 'upload'}: {reason}")


def read_model_card(model_path: Path, spec_metrics: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(metrics, MODEL_CARD.md text) from files next to the model, if present.

    Metrics are the spec's, updated by ``<model>.metrics.json`` or ``metrics.json`` in the
    model's folder, plus the results listed in the card's front matter (``model_card``).
    Non-finite numbers become null so the JSON answer stays valid.
    """
    metrics = dict(spec_metrics)
    for candidate in (model_path.with_suffix(".metrics.json"), model_path.parent / "metrics.json"):
        text = _small_text(candidate)
        if text is None:
            continue
        try:
            loaded = json.loads(text)
        except ValueError as err:
            logger.warning("%s: ignoring unreadable metrics file (%s)", candidate, err)
            continue
        if isinstance(loaded, dict):
            metrics.update(loaded)
            break
    card = _small_text(model_path.parent / "MODEL_CARD.md")
    if card:
        results = _card_results(card)
        if results:
            metrics["model_card"] = results
    return _finite(metrics), card


def _card_results(card: str) -> list[dict[str, Any]]:
    """The metrics of a model card's YAML front matter (Hugging Face ``model-index``)."""
    if not card.startswith("---"):
        return []
    try:
        meta = yaml.safe_load(card.split("---", 2)[1])
        out = []
        for entry in meta.get("model-index", []):
            for result in entry.get("results", []):
                dataset = result.get("dataset", {})
                for metric in result.get("metrics", []):
                    out.append({"name": metric.get("name"), "value": metric.get("value"),
                                "dataset": dataset.get("name"), "split": dataset.get("split")})
        return out
    except (yaml.YAMLError, AttributeError, IndexError, TypeError) as err:
        logger.warning("ignoring unreadable model card front matter (%s)", err)
        return []


def _small_text(path: Path) -> str | None:
    try:
        if not path.is_file():
            return None
        if path.stat().st_size > MAX_SIDE_FILE_BYTES:
            logger.warning("%s: larger than %d bytes, not served", path, MAX_SIDE_FILE_BYTES)
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        logger.warning("%s: cannot read (%s)", path, err)
        return None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _displayable(image: Image.Image) -> Image.Image:
    """An 8-bit image a browser shows as the model saw it (16-bit gray rescaled like preprocessing)."""
    return to_gray(image) if image.mode in ("I;16", "I") else image


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
