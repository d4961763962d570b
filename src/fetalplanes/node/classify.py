"""The node's one door to the model: the admission gate, the Predictor adapter, and the frames to report.

- :func:`admit` is the bounded decode and metadata gate every received instance passes before it
  is acknowledged: the same :class:`fetalplanes.core.dicom.DicomFrames` reader as every other
  input path (size limits, codestream checks, decoder availability), plus decoding frame 0, so a
  broken instance is refused at the door with a one-line reason instead of acknowledged and lost.
- :func:`classify_file` is the ONE place the node calls the Predictor API (every frame of a cine).
- :func:`best_per_plane` picks, for each verdict, the frame with the highest confidence: what
  the SR reports (``stream`` makes the same choice for video).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fetalplanes.core.errors import ImageLoadError
from fetalplanes.core.formats import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from fetalplanes.core.postprocess import Prediction
    from fetalplanes.runtime.predictor import FileResult

__all__ = ["DEFAULT_MAX_BYTES", "VERDICTS", "Admitted", "admit", "best_per_plane", "classify_file", "verdict"]

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
"""Largest instance the node accepts (bytes): a long uncompressed cine is ~100-300 MB."""

VERDICTS = ("classified", "abstained", "not_fetal_plane")
"""What the SR can say about a frame: a plane, no answer (confidence below the model's
threshold), or not a fetal plane at all (the out-of-distribution verdict)."""


@dataclass(frozen=True)
class Admitted:
    """An instance that passed :func:`admit`: its header (no pixel data) and frame count."""

    header: Dataset
    frames: int


def admit(data: bytes, label: str, max_pixels: int = DEFAULT_MAX_PIXELS,
          max_bytes: int = DEFAULT_MAX_BYTES) -> Admitted:
    """Check one received instance (Part 10 bytes) before it is acknowledged.

    Raises :class:`ImageLoadError` (one line naming ``label``, the reason and what was expected)
    for an instance too large, unparsable, with invalid geometry, an undecodable transfer
    syntax, or a first frame that does not decode.
    """
    from fetalplanes.core.dicom import DicomFrames

    if len(data) > max_bytes:
        raise ImageLoadError(label, f"{len(data):,} bytes is too large", f"at most {max_bytes:,} bytes")
    frames = DicomFrames(data, label, max_pixels)
    frames.frame(0)  # decode one frame: a damaged codestream is refused now, not after "success"
    header = frames.ds.copy()
    for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if tag in header:
            del header[tag]
    return Admitted(header, len(frames))


def classify_file(predictor: Any, path: str | os.PathLike[str], k: int = 2) -> list[FileResult]:
    """Every frame of one journaled instance answered: one FileResult per frame (``frame`` None
    for a single-frame file), a bad frame an ``error``; never raises for bad input.

    The single adapter to the Predictor API (``fetalplanes.runtime.Predictor.predict``: a
    multi-frame DICOM expands into one FileResult per frame), so a change of that API is one edit here.
    """
    return list(predictor.predict([Path(path)], k=k))


def verdict(prediction: Prediction) -> str:
    """The SR's status of one answer (``Prediction.state``): 'not_fetal_plane' when the
    out-of-distribution gate rejects it, else 'abstained' or 'classified'."""
    return {"out_of_distribution": "not_fetal_plane", "abstain": "abstained"}.get(prediction.state, "classified")


def best_per_plane(results: list[FileResult]) -> list[FileResult]:
    """For each plane (and each non-plane verdict), the answered frame with the highest confidence,
    in frame order. Frames that failed to decode are left out (the caller reports them)."""
    best: dict[tuple[str, str], FileResult] = {}
    for r in results:
        if r.prediction is None:
            continue
        v = verdict(r.prediction)
        key = (v, r.prediction.label if v == "classified" else "")
        if key not in best or r.prediction.confidence > best[key].prediction.confidence:  # type: ignore[union-attr]
            best[key] = r
    return sorted(best.values(), key=lambda r: -1 if r.frame is None else r.frame)
