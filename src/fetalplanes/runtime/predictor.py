"""The Predictor: one trained-model file turned into answers, written once for every backend.

:class:`Predictor` holds everything that is not the model call: decoding (through
``core.frames.open_frames``, so a multi-frame file is answered frame by frame), the shared
preprocessing (``core.preprocess``), batching, the spec's temperature, top-k and abstain
(``core.postprocess``), the out-of-distribution gate (``core.ood``: "not a fetal plane") and the
per-item errors. A backend implements one private method, ``_run(x) -> logits``, and, when its
model file carries the OOD gate, ``_run_features(x) -> (logits, features)``; the backends are :class:`fetalplanes.runtime.onnx_backend.OnnxPredictor`
(ONNX Runtime, torch-free) and :class:`fetalplanes.models.torch_backend.TorchPredictor`
(PyTorch), opened by file kind with :func:`fetalplanes.runtime.load_predictor`. A ``.ckpt``
and its ``.onnx`` export therefore answer alike.

Three public methods:

- :meth:`Predictor.predict`: paths, folders, bytes, PIL images or pixel arrays -> one
  :class:`FileResult` per still input or per frame, each a prediction or a one-line error;
- :meth:`Predictor.logits`: a preprocessed float32 batch (N, 3, S, S) -> logits (N, C);
  :meth:`Predictor.logits_and_ood` also gives the OOD gate's scores (N,) (None without a gate);
- :meth:`Predictor.describe`: what the model is and expects.

Torch-free: numpy, Pillow and ``fetalplanes.core`` only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Union

import numpy as np
from PIL import Image

from fetalplanes.core.errors import EXPECTED, GateRefusal, ImageLoadError
from fetalplanes.core.formats import sniff_format, sniff_video
from fetalplanes.core.frames import is_video_file, open_frames
from fetalplanes.core.io import expand_inputs
from fetalplanes.core.ood import OODStats
from fetalplanes.core.ood import score as ood_score
from fetalplanes.core.postprocess import Prediction, decide, softmax
from fetalplanes.core.preprocess import preprocess
from fetalplanes.core.spec import ModelSpec, Preprocessing
from fetalplanes.runtime.artifact import ood_stats

__all__ = ["DEFAULT_BATCH", "FileResult", "ImageInput", "Predictor"]

log = logging.getLogger(__name__)

DEFAULT_BATCH = 32
"""Inputs per model call in :meth:`Predictor.predict`."""

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]
"""One input of :meth:`Predictor.predict`: a file or folder path, encoded bytes, a decoded PIL
image, or pixels as a uint8/uint16 array (H, W) or (H, W, 3|4)."""

_BYTES = (bytes, bytearray, memoryview)
_SINGLE = (str, os.PathLike, *_BYTES, Image.Image, np.ndarray)
_ARRAY_EXPECTED = ("pixels as a uint8 or uint16 array of shape (H, W) or (H, W, 3|4); "
                   "a preprocessed float32 (N, 3, S, S) batch goes to Predictor.logits")
_VIDEO_EXPECTED = f"{EXPECTED}; `fetalplanes stream` classifies every frame of a video"


@dataclass(frozen=True)
class FileResult:
    """One answer of :meth:`Predictor.predict`: a prediction, or the one-line reason there is none.

    ``index`` is the input's 0-based position in the call (folders replaced by their images);
    ``path`` the file (None for bytes, images and arrays). A multi-frame file (DICOM cine,
    multi-page TIFF, animated GIF) gives one result per frame: ``frame`` is the 0-based index
    (the one ``stream``'s frames.csv and the error lines use) and ``time_s`` its time stamp in
    seconds; both are None for a still image and for a file-level error. ``logits`` are the
    model's raw outputs (C,) float32 for an answered input (calibration and evaluation read them).
    """

    index: int
    path: Path | None = None
    prediction: Prediction | None = None
    error: str | None = None
    frame: int | None = None
    time_s: float | None = None
    logits: np.ndarray | None = field(default=None, repr=False, compare=False)
    gate_refused: bool = False
    """True when ``error`` is the DICOM metadata gate's refusal (``core.errors.GateRefusal``: a
    readable file that is not ultrasound, or has no B-mode region), not an unreadable input."""

    @property
    def ok(self) -> bool:
        return self.prediction is not None

    @property
    def name(self) -> str:
        """``path`` (or ``<input N>`` for an in-memory input), then ``#frame=N`` for a frame."""
        where = str(self.path) if self.path is not None else f"<input {self.index}>"
        return where if self.frame is None else f"{where}#frame={self.frame}"


class Predictor:
    """A trained model behind one interface; subclasses set ``kind`` and implement ``_run``.

    Attributes: ``path`` (the model file), ``spec`` (its :class:`~fetalplanes.core.spec.ModelSpec`),
    ``kind`` ('checkpoint' or 'onnx'), ``class_names`` and ``input_size`` (S, pixels).
    """

    kind: ClassVar[str] = ""

    def __init__(self, path: str | os.PathLike[str], spec: ModelSpec, ood_blob: str | None = None) -> None:
        self.path = Path(path)
        self.spec = spec
        # The OOD gate's statistics (None: the model file has no gate; every answer says so).
        # A spec naming a gate whose statistics are missing or altered is a ModelFileError here.
        self.ood_stats: OODStats | None = ood_stats(spec, ood_blob, str(self.path))

    # -- the one method a backend implements ---------------------------------------------
    def _run(self, x: np.ndarray) -> np.ndarray:
        """Checked, non-empty batch float32 (N, 3, S, S) -> logits float32 (N, C)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _run")

    def _run_features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Checked, non-empty batch -> (logits (N, C), OOD features (N, F)); backends whose files
        carry the OOD gate implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no OOD features")

    # -- public --------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    @property
    def input_size(self) -> int:
        return self.spec.preprocessing.image_size

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, {self.spec.name}, {self.spec.num_classes} classes, "
                f"{self.input_size} px)")

    def logits(self, arrays: np.ndarray) -> np.ndarray:
        """Preprocessed batch float32 (N, 3, S, S) (``core.preprocess``) -> logits float32 (N, C).

        Raises ``ValueError`` naming the expected shape for any other array. N may be 0.
        """
        x = self._checked(arrays)
        if len(x) == 0:
            return np.zeros((0, self.spec.num_classes), dtype=np.float32)
        return np.asarray(self._run(x), dtype=np.float32)

    def _checked(self, arrays: np.ndarray) -> np.ndarray:
        """``arrays`` as contiguous float32 after the one shape check (N, 3, S, S); else ValueError."""
        x = np.ascontiguousarray(arrays, dtype=np.float32)
        s = self.input_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(f"expected a preprocessed float32 array of shape (N, 3, {s}, {s}), got {x.shape}")
        return x

    @property
    def has_ood_gate(self) -> bool:
        """True when this model file carries the OOD gate (``spec.ood`` and its statistics)."""
        return self.ood_stats is not None

    def logits_and_ood(self, arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Preprocessed batch (N, 3, S, S) -> (logits (N, C) float32, OOD scores (N,) float64 or None).

        The scores are the spec's ``ood.score`` (``core.ood``; higher = less like the training
        images; above ``spec.ood["threshold"]`` = out of distribution); None when the model has no
        OOD gate. Same shape errors as :meth:`logits`.
        """
        if self.ood_stats is None:
            return self.logits(arrays), None
        x = self._checked(arrays)
        if len(x) == 0:
            return np.zeros((0, self.spec.num_classes), dtype=np.float32), np.zeros(0)
        logits, feats = self._run_features(x)
        return np.asarray(logits, dtype=np.float32), ood_score(self.spec.ood["score"], feats, self.ood_stats)

    def predict(self, inputs: ImageInput | Sequence[ImageInput], k: int = 2, *,
                batch_size: int = DEFAULT_BATCH, workers: int = 0) -> list[FileResult]:
        """Top-k calibrated answers, one :class:`FileResult` per still input or per frame, in input order.

        ``inputs``: one :data:`ImageInput` or a list of them; a folder is searched recursively
        for images. Every input gets an answer or its own one-line error (unreadable, missing,
        a video, a bad frame, a short read), so a bad file never costs the good ones theirs.
        ``batch_size`` inputs go to the model per call; ``workers`` > 0 decodes that many inputs
        at a time in threads (Pillow and pydicom release the GIL for most of a decode).
        """
        items = [inputs] if isinstance(inputs, _SINGLE) else list(inputs)
        sources = _expand(items)
        step = max(1, int(batch_size))
        results: list[FileResult] = []
        pending: list[tuple[FileResult, np.ndarray]] = []
        for item in _decoded(sources, self.spec.preprocessing, workers, step):
            if isinstance(item, FileResult):
                results.append(item)
                continue
            pending.append(item)
            if len(pending) >= step:
                results += self._answer(pending, k)
                pending = []
        results += self._answer(pending, k)
        return sorted(results, key=lambda r: (r.index, -1 if r.frame is None else r.frame))

    def describe(self) -> dict[str, Any]:
        """What the model is and expects (for logs, ``--info`` output and the web service)."""
        pre = self.spec.preprocessing
        return {
            "path": str(self.path),
            "kind": self.kind,
            "name": self.spec.name,
            "task": self.spec.task,
            "class_names": list(self.spec.class_names),
            "image_size": pre.image_size,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "temperature": self.spec.temperature,
            "abstain_threshold": self.spec.abstain_threshold,
            "ood_gate": ({k: v for k, v in self.spec.ood.items() if k != "stats_sha256"} if self.has_ood_gate
                         else "none: this model file has no out-of-distribution gate"),
            "spec_format_version": self.spec.format_version,
        }

    # -- shared internals ----------------------------------------------------------------
    def _answer(self, pending: list[tuple[FileResult, np.ndarray]], k: int) -> list[FileResult]:
        """The waiting inputs (result stub, preprocessed (3, S, S) array) answered in one model call."""
        if not pending:
            return []
        logits, scores = self.logits_and_ood(np.stack([x for _, x in pending]))  # the batch's one shape check
        probs = softmax(logits, self.spec.temperature)
        answers = decide(probs, self.spec.class_names, k, self.spec.abstain_threshold, scores,
                         self.spec.ood.get("threshold") if scores is not None else None)
        return [replace(stub, prediction=p, logits=row) for (stub, _), p, row in zip(pending, answers, logits)]


Pending = Union[FileResult, tuple[FileResult, np.ndarray]]


def _expand(items: list[Any]) -> list[Any]:
    """Inputs with every folder replaced by its images; a missing path is kept (one error row)."""
    out: list[Any] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            out += expand_inputs([item], missing_ok=True)
        else:
            out.append(item)
    return out


def _decoded(sources: list[Any], pre: Preprocessing, workers: int, step: int) -> Iterator[Pending]:
    """Every source's ``(stub, array)`` per decoded frame, or its error rows, in source order.

    Without workers the sources are decoded lazily, one frame at a time; with workers, ``step``
    sources at a time, each fully, in threads.
    """
    if workers <= 0:
        for index, source in enumerate(sources):
            yield from _source_inputs(index, source, pre)
        return
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(sources), step):
            chunk = list(enumerate(sources[start : start + step], start))
            for rows in pool.map(lambda job: list(_source_inputs(job[0], job[1], pre)), chunk):
                yield from rows


def _source_inputs(index: int, source: Any, pre: Preprocessing) -> Iterator[Pending]:
    """One input's preprocessed frames, or one error row per bad frame / unreadable input."""
    if isinstance(source, Image.Image):
        yield FileResult(index), preprocess(source, pre)
        return
    if isinstance(source, np.ndarray):
        try:
            image = _array_image(source, f"<input {index}>")
        except ImageLoadError as err:
            yield FileResult(index, error=str(err))
            return
        yield FileResult(index), preprocess(image, pre)
        return
    if isinstance(source, _BYTES):
        yield from _file_inputs(index, None, bytes(source), pre)
        return
    if isinstance(source, (str, os.PathLike)):
        yield from _file_inputs(index, Path(source), Path(source), pre)
        return
    yield FileResult(index, error=f"<input {index}>: a {type(source).__name__}, not an image; expected a path, "
                                  "bytes, a PIL image or a pixel array")


def _file_inputs(index: int, path: Path | None, source: Path | bytes, pre: Preprocessing) -> Iterator[Pending]:
    """A file's (or encoded bytes') frames through ``core.frames.open_frames``: a still gives one
    row; a multi-frame file one per frame, a bad frame and a short read their own error rows."""
    label = str(path) if path is not None else f"<input {index}>"
    if _is_video(source):
        yield FileResult(index, path, error=str(ImageLoadError(label, "a video, not a still image or DICOM cine",
                                                               _VIDEO_EXPECTED)))
        return
    reader = None
    try:
        reader = open_frames(source, name=label)
        multi = (reader.info.get("frames_declared") or 1) > 1
        for frame in reader:
            stub = FileResult(index, path, frame=frame.index, time_s=frame.time_s) if multi else FileResult(index, path)
            yield stub, preprocess(frame.image, pre)
    except ImageLoadError as err:
        if reader is None or not reader.skipped:  # else the skipped frames below say it, one row each
            yield FileResult(index, path, error=str(err), gate_refused=isinstance(err, GateRefusal))
    if reader is None:
        return
    for bad in reader.skipped:
        yield FileResult(index, path, error=str(bad), frame=bad.frame)
    if reader.info.get("short_read"):
        yield FileResult(index, path, error=f"{label}: short read: {reader.info['short_read']}")


def _is_video(source: Path | bytes) -> bool:
    if isinstance(source, Path):
        return is_video_file(source)
    head = source[:132]
    return sniff_format(head) is None and sniff_video(head) is not None


def _array_image(array: np.ndarray, label: str) -> Image.Image:
    """Pixels (H, W) or (H, W, 1|3|4), uint8 or uint16 (gray only), as a PIL image; else ImageLoadError."""
    a = array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array
    ok_shape = a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))
    ok_type = a.dtype == np.uint8 or (a.dtype == np.uint16 and a.ndim == 2)
    if not (ok_shape and ok_type) or a.size == 0:
        raise ImageLoadError(label, f"an array of shape {array.shape} and dtype {array.dtype}", _ARRAY_EXPECTED)
    return Image.fromarray(np.ascontiguousarray(a))
