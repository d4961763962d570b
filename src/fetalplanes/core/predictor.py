"""The one Predictor interface, torch-free: every command and the service turn images into answers here.

A Predictor wraps one trained-model file and knows its :class:`~fetalplanes.core.spec.ModelSpec`.
Backends implement a single method, :meth:`BasePredictor.predict_arrays` (a preprocessed batch
to logits); everything else (decoding, the shared preprocessing, temperature, top-k, abstain,
per-file and per-frame errors) is written once here, so a ``.ckpt`` and its ``.onnx`` export
answer alike. The backends live above this module: ``fetalplanes.runtime.predictor.OnnxPredictor``
(ONNX Runtime) and ``fetalplanes.models.predictor.TorchPredictor`` (PyTorch); open a file with
``fetalplanes.runtime.load_predictor``. It sits in ``core`` so that both backends can build on it
without ``models`` and ``runtime`` importing each other.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence, Union, runtime_checkable

import numpy as np
from PIL import Image

from fetalplanes.core.io import EXPECTED, ImageLoadError, list_images, load_image
from fetalplanes.core.postprocess import Prediction, decide, softmax
from fetalplanes.core.preprocess import preprocess, preprocess_batch
from fetalplanes.core.spec import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_BATCH = 32
ImageInput = Union[str, os.PathLike, bytes, Image.Image]


@runtime_checkable
class Predictor(Protocol):
    """What every backend offers (see :class:`BasePredictor` for the shared implementation)."""

    kind: str
    path: Path
    spec: ModelSpec

    @property
    def class_names(self) -> tuple[str, ...]: ...

    def predict_arrays(self, x: np.ndarray) -> np.ndarray: ...

    def logits(self, images: Sequence[ImageInput], batch_size: int = DEFAULT_BATCH) -> np.ndarray: ...

    def predict(self, inputs: ImageInput | Sequence[ImageInput], k: int = 2) -> Prediction | list[Prediction]: ...


@dataclass(frozen=True)
class FileResult:
    """One input's answer in a batch: a prediction, or the one-line reason it was refused.

    For a multi-frame file (DICOM cine, multi-page TIFF, animated GIF) there is one result per
    frame: ``frame`` is the 0-based index (the one ``stream``'s frames.csv and the error lines
    use) and ``time_s`` its time stamp in seconds; both are None for a still image.
    """

    path: Path
    prediction: Prediction | None = None
    error: str | None = None
    frame: int | None = None
    time_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.prediction is not None

    @property
    def name(self) -> str:
        """``path``, or ``path#frame=N`` for a frame of a multi-frame file."""
        return str(self.path) if self.frame is None else f"{self.path}#frame={self.frame}"


class BasePredictor:
    """Shared logic of all backends; subclasses set ``kind``, ``path``, ``spec`` and implement
    :meth:`predict_arrays`."""

    kind: str = ""
    path: Path
    spec: ModelSpec

    # -- the one method a backend implements ---------------------------------------------
    def predict_arrays(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed batch, float32 (N, 3, S, S) -> logits, float32 (N, C)."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    @property
    def input_size(self) -> int:
        return self.spec.preprocessing.image_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.spec.name}, {self.spec.num_classes} classes, {self.input_size} px)"

    def check_batch(self, x: np.ndarray) -> np.ndarray:
        """``x`` as contiguous float32 after checking its shape is (N, 3, S, S)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        s = self.input_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(f"expected an array of shape (N, 3, {s}, {s}), got {x.shape}")
        return x

    def _decode(self, item: ImageInput) -> Image.Image:
        if isinstance(item, Image.Image):
            return item
        if isinstance(item, (bytes, bytearray, memoryview)):
            return load_image(bytes(item))
        return load_image(Path(item))

    def _try_decode(self, item: ImageInput) -> Image.Image | ImageLoadError:
        try:
            return self._decode(item)
        except ImageLoadError as err:
            return err

    def logits(self, images: Sequence[ImageInput], batch_size: int = DEFAULT_BATCH, workers: int = 0) -> np.ndarray:
        """Logits (N, C) for images, files or encoded bytes, preprocessed as in training.

        ``workers`` > 0 decodes files in that many threads (Pillow and pydicom release the GIL
        for most of the decode). Raises ``ImageLoadError`` naming the first unreadable input.
        """
        out, errors = self.readable_logits(images, batch_size, workers)
        if errors:
            raise errors[0][1]
        return out

    def readable_logits(
        self, images: Sequence[ImageInput], batch_size: int = DEFAULT_BATCH, workers: int = 0
    ) -> tuple[np.ndarray, list[tuple[int, ImageLoadError]]]:
        """Logits (n_readable, C) of the readable inputs, in input order, and ``(position, error)``
        for every unreadable one: each input is decoded once and no error stops the batch, so a
        command can list all bad files at once (``core.io.report_bad_files``)."""
        images = list(images)
        step = max(1, int(batch_size))
        out, errors = [], []
        pool = ThreadPoolExecutor(workers) if workers > 0 else None
        try:
            for i in range(0, len(images), step):
                chunk = images[i : i + step]
                decoded = list(pool.map(self._try_decode, chunk)) if pool else [self._try_decode(c) for c in chunk]
                errors += [(i + j, d) for j, d in enumerate(decoded) if isinstance(d, ImageLoadError)]
                good = [d for d in decoded if not isinstance(d, ImageLoadError)]
                if good:
                    out.append(self.predict_arrays(self.check_batch(preprocess_batch(good, self.spec.preprocessing))))
        finally:
            if pool:
                pool.shutdown()
        logits = np.concatenate(out) if out else np.zeros((0, self.spec.num_classes), dtype=np.float32)
        return logits, errors

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, C) float64: softmax of logits / the spec's temperature."""
        return np.asarray(softmax(logits, self.spec.temperature), dtype=np.float64)

    def decide(self, logits: np.ndarray, k: int = 2) -> list[Prediction]:
        """Top-k Predictions with the spec's temperature and abstain threshold."""
        if len(logits) == 0:
            return []
        return decide(self.probabilities(logits), self.spec.class_names, k, self.spec.abstain_threshold)

    def predict(self, inputs: ImageInput | Sequence[ImageInput], k: int = 2) -> Prediction | list[Prediction]:
        """One input (path, bytes or PIL image) -> a Prediction; a list of inputs -> a list."""
        single = isinstance(inputs, (str, os.PathLike, bytes, bytearray, Image.Image))
        items = [inputs] if single else list(inputs)  # type: ignore[list-item]
        preds = self.decide(self.logits(items), k)
        return preds[0] if single else preds

    def predict_images(self, images: Sequence[Image.Image], k: int = 2, batch_size: int = DEFAULT_BATCH) -> list[Prediction]:
        """Calibrated top-k Predictions for decoded images."""
        return self.decide(self.logits(list(images), batch_size), k)

    def predict_bytes(self, data: bytes, name: str | None = None, k: int = 2) -> Prediction:
        """One encoded image (PNG/JPEG/BMP/TIFF/DICOM bytes, e.g. an upload) -> Prediction."""
        return self.predict_images([load_image(data, name=name)], k)[0]

    def predict_files(
        self, paths: Iterable[str | os.PathLike[str]], k: int = 2, batch_size: int = DEFAULT_BATCH
    ) -> list[tuple[Path, Prediction]]:
        """[(path, Prediction)] for files and folders; raises on the first unreadable file."""
        files = expand_inputs(paths)
        return list(zip(files, self.decide(self.logits(files, batch_size), k)))

    def predict_batch(
        self, paths: Iterable[str | os.PathLike[str]], k: int = 2, batch_size: int = DEFAULT_BATCH
    ) -> list[FileResult]:
        """Every readable file answered; each unreadable one gets its own one-line error.

        A corrupt file never costs the answers of the good files in the same call. A multi-frame
        file (DICOM cine, multi-page TIFF, animated GIF) is answered frame by frame through
        :func:`fetalplanes.core.frames.open_frames`: one result per frame, a bad frame an error
        naming its index, the good frames still answered. A video file is refused with a
        pointer to ``stream``. Results come in input order, frames in index order.
        """
        files = expand_inputs(paths, missing_ok=True)  # a missing file is one bad row, not the batch's end
        step = max(1, int(batch_size))
        results: list[FileResult] = []
        pending: list[tuple[FileResult, np.ndarray]] = []
        for f in files:
            for item in _file_frames(f, self.spec.preprocessing):
                if isinstance(item, FileResult):
                    results.append(item)
                    continue
                pending.append(item)
                if len(pending) >= step:
                    results += self._answer(pending, k)
                    pending = []
        results += self._answer(pending, k)
        order = {f: n for n, f in enumerate(files)}
        return sorted(results, key=lambda r: (order[r.path], -1 if r.frame is None else r.frame))

    def _answer(self, pending: list[tuple[FileResult, np.ndarray]], k: int) -> list[FileResult]:
        """The waiting inputs (result stub, preprocessed (3, S, S) array) answered in one model call."""
        if not pending:
            return []
        logits = self.predict_arrays(self.check_batch(np.stack([x for _, x in pending])))
        return [replace(stub, prediction=p) for (stub, _), p in zip(pending, self.decide(logits, k))]

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
            "spec_format_version": self.spec.format_version,
        }


def _file_frames(path: Path, pre: Any) -> Iterator[FileResult | tuple[FileResult, np.ndarray]]:
    """One file's inputs for :meth:`BasePredictor.predict_batch`: ``(stub, array)`` per decoded
    frame; a ``FileResult`` with the error per bad frame, for a short read, or once for an
    unreadable file."""
    from fetalplanes.core.frames import is_video_file, open_frames

    if is_video_file(path):
        err = ImageLoadError(str(path), "a video, not a still image or DICOM cine",
                             f"{EXPECTED}; `fetalplanes stream` classifies every frame of a video")
        yield FileResult(path, error=str(err))
        return
    reader = None
    try:
        reader = open_frames(path)
        multi = (reader.info.get("frames_declared") or 1) > 1
        for frame in reader:
            stub = FileResult(path, frame=frame.index, time_s=frame.time_s) if multi else FileResult(path)
            yield stub, preprocess(frame.image, pre)
    except ImageLoadError as err:
        if reader is None or not reader.skipped:
            yield FileResult(path, error=str(err))
    if reader is None:
        return
    for bad in reader.skipped:
        yield FileResult(path, error=str(bad), frame=bad.frame)
    if reader.info.get("short_read"):
        yield FileResult(path, error=f"{path}: short read: {reader.info['short_read']}")


def expand_inputs(paths: Iterable[str | os.PathLike[str]], missing_ok: bool = False) -> list[Path]:
    """Files as given, folders searched recursively for images; FileNotFoundError for a missing
    path, unless ``missing_ok`` (then it is kept, and its reader reports it like any bad file)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += list_images(p)
        elif p.exists() or missing_ok:
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return files


__all__ = ["DEFAULT_BATCH", "BasePredictor", "FileResult", "ImageInput", "Predictor", "expand_inputs"]
