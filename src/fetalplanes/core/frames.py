"""Frames of a cine loop, video, multi-page image or frame folder, one at a time, robust per frame.

:func:`open_frames` returns a :class:`FrameReader`: iterate it for :class:`Frame` objects
(0-based index, time stamp in seconds, decoded PIL image). It is what ``stream`` reads and
what ``predict`` can use for a multi-frame DICOM:

- a frame that cannot be decoded is skipped, logged as one warning line naming the file and
  frame (:class:`~fetalplanes.core.errors.ImageLoadError`), and kept in ``reader.skipped``;
- the declared frame count (DICOM NumberOfFrames, the video header, the TIFF/GIF page count)
  is compared with what was read; a short read is logged and kept in ``reader.info``;
- third-party decoder errors (pydicom plugins, Pillow, FFmpeg via PyAV) become one line; no
  third-party traceback leaves this module; a source where no frame decodes raises
  ImageLoadError at the end of iteration;
- time stamps come from the user's fps, else the DICOM timing attributes (FrameTime in ms,
  CineRate, RecommendedDisplayFrameRate, in that order; PS3.3 C.7.6.5), else the video's
  own time stamps and rate, else :data:`DEFAULT_FPS`. Each DICOM attribute is validated (a
  finite number, a rate between 0 and :data:`MAX_FPS` frames/s); an invalid one, e.g.
  ``FrameTime = "33,3"``, ``0`` or ``-40``, is skipped with one warning naming the file and
  attribute. Time stamps are never negative.

Frames follow the one intensity rule (:mod:`fetalplanes.core.intensity`); video frames are
decoded to 8-bit luma and turned upright by their display matrix (:func:`upright`), as players
show them, and ``info`` reports the displayed width and height. Torch-free; PyAV (``fetalplanes[video]``) is imported only for video.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from PIL import Image

from fetalplanes.core.dicom import DicomFrames
from fetalplanes.core.errors import ImageLoadError, UsageError
from fetalplanes.core.formats import DEFAULT_MAX_PIXELS, VIDEO_SUFFIXES, check_size, format_named, sniff_format, sniff_video
from fetalplanes.core.io import IMAGE_SUFFIXES, PilFrames, Source, _read_source, list_images, load_image
from fetalplanes.core.limits import BudgetExceeded, PixelBudget

__all__ = ["DEFAULT_FPS", "MAX_FPS", "VIDEO_SUFFIXES", "Frame", "FrameReader", "dicom_frame_rate", "is_video_file",
           "open_frames", "read_frame"]

logger = logging.getLogger(__name__)

DEFAULT_FPS = 25.0
"""Frame rate assumed when neither the user nor the file gives a valid one (frames/s)."""
MAX_FPS = 1000.0
"""Highest plausible frame rate; ultrasound cine runs at 10-200 frames/s."""
VIDEO_EXPECTED = "a readable video (MP4, AVI, MOV, MKV, WebM, MPEG)"
_DICOM_TIMING = (  # attribute, its value -> frames per second
    ("FrameTime", lambda ms: 1000.0 / ms),
    ("CineRate", float),
    ("RecommendedDisplayFrameRate", float),
)


@dataclass(frozen=True)
class Frame:
    """One decoded frame: 0-based ``index`` in its source, ``time_s`` (>= 0) and the image."""

    index: int
    time_s: float
    image: Image.Image


class FrameReader:
    """Iterable of :class:`Frame`; ``info`` and ``skipped`` fill in while it is iterated.

    ``info`` keys: kind, fps, fps_source, frames_declared, frames_decoded, frames_skipped,
    skipped (list of {frame, error}), short_read (str or None), warnings (list of str), plus
    codec/width/height for video. Iterate once.
    """

    def __init__(self, label: str, info: dict[str, Any], frames: Callable[[FrameReader], Iterator[Frame]],
                 first: Callable[[], Image.Image] | None = None) -> None:
        self.label = label
        self.info: dict[str, Any] = {"frames_decoded": 0, "frames_skipped": 0, "skipped": [], "short_read": None,
                                     "warnings": [], **info}
        self.skipped: list[ImageLoadError] = []
        self._frames = frames
        self._first = first

    def first_image(self) -> Image.Image:
        """Frame 0 decoded exactly as :func:`~fetalplanes.core.io.load_image` decodes it, from the
        header this reader already parsed (a single-frame file is parsed once, not twice); its
        error is raised (ImageLoadError, BudgetExceeded), not skipped. DICOM and Pillow sources."""
        if self._first is None:
            raise UsageError(f"{self.label}: first_image() is for DICOM and Pillow sources; iterate the reader")
        return self._first()

    @property
    def fps(self) -> float:
        return float(self.info["fps"])

    def __iter__(self) -> Iterator[Frame]:
        for frame in self._frames(self):
            self.info["frames_decoded"] += 1
            yield frame
        self._finish()

    def skip(self, err: ImageLoadError) -> None:
        """Record a bad frame (called by the source generators)."""
        self.skipped.append(err)
        self.info["frames_skipped"] += 1
        self.info["skipped"].append({"frame": err.frame, "error": str(err)})
        logger.warning("%s", err)

    def short(self, reason: str) -> None:
        self.info["short_read"] = reason

    def warn(self, message: str) -> None:
        self.info["warnings"].append(message)
        logger.warning("%s", message)

    def _finish(self) -> None:
        info, read = self.info, self.info["frames_decoded"] + self.info["frames_skipped"]
        declared = info.get("frames_declared")
        if declared and read < declared and not info["short_read"]:
            info["short_read"] = f"{read} of {declared} declared frame(s) present"
        if info["short_read"]:
            logger.warning("%s: short read: %s", self.label, info["short_read"])
        if info["frames_skipped"]:
            listed = ", ".join(str(e.frame) for e in self.skipped[:10]) + (", ..." if len(self.skipped) > 10 else "")
            logger.warning("%s: %d of %d frame(s) skipped (frame %s)", self.label, info["frames_skipped"], read, listed)
        if info["frames_decoded"] == 0:
            first = f"; first: {self.skipped[0].reason}" if self.skipped else ""
            why = f"{info['frames_skipped']} bad frame(s){first}" if info["frames_skipped"] else info["short_read"] or "empty"
            raise ImageLoadError(self.label, f"no frame could be decoded ({why})", "at least one readable frame")


def open_frames(
    source: Source,
    *,
    name: str | None = None,
    fps: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
    budget: PixelBudget | None = None,
) -> FrameReader:
    """A :class:`FrameReader` over a DICOM cine, video, multi-page image, still image or frame folder.

    ``fps`` (frames/s, > 0) overrides the file's timing. Raises :class:`ImageLoadError` for
    a source that cannot be opened at all (not found, not a supported format, no decoder).
    ``budget`` (DICOM and multi-page images, e.g. one per service request) is charged each
    frame's header size before it is decoded; the frame that would exceed it stops the
    iteration with :class:`~fetalplanes.core.limits.BudgetExceeded` (not a skipped frame: the
    file is fine, the request is spent).
    """
    if fps is not None and not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise UsageError(f"fps must be a number in (0, {MAX_FPS:g}], got {fps!r}")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = name or os.fspath(source)
        if path.is_dir():
            return _folder(path, label, fps, max_pixels)
        if is_video_file(path):
            return _video(path, label, fps, max_pixels)
    data, label = _read_source(source, name, max_bytes)
    fmt = sniff_format(data)
    if fmt is None and sniff_video(data):
        return _video(BytesIO(data), label, fps, max_pixels)
    if fmt == "dicom":
        return _dicom(data, label, fps, max_pixels, budget)
    if fmt is None or not format_named(fmt).accepted:
        load_image(data, name=label)  # raises the loader's one-line "not an image" / refusal error
    return _pages(data, fmt, label, fps, max_pixels, budget)


def read_frame(source: Source, index: int, *, name: str | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Frame, int]:
    """Frame ``index`` (0-based) of a still image, DICOM cine, multi-page image or video, and the
    file's frame count (declared, else counted while reading).

    Decodes frames in order up to ``index`` (a video can only be read that way). Raises
    :class:`ImageLoadError` naming the file and frame: for an index past the last frame ("frame 9
    does not exist: the file has 6 frame(s); expected a frame from 0 to 5"), for that frame when
    it cannot be decoded, or as :func:`open_frames` does for a file that cannot be read.
    """
    if index < 0:
        raise UsageError(f"a frame index is 0 or more, got {index}")
    reader = open_frames(source, name=name, max_pixels=max_pixels)
    declared = int(reader.info.get("frames_declared") or 0)
    if declared and index >= declared:
        raise _no_such_frame(reader.label, index, declared)
    frames = iter(reader)
    try:
        for frame in frames:
            if frame.index == index:
                return frame, declared or index + 1
            if frame.index > index:
                break
    finally:
        frames.close()  # a video's container is closed now, not when the generator is collected
    bad = next((e for e in reader.skipped if e.frame == index), None)
    if bad is not None:
        raise bad
    return _raise_no_such_frame(reader, index)


def _raise_no_such_frame(reader: FrameReader, index: int) -> tuple[Frame, int]:
    read = reader.info["frames_decoded"] + reader.info["frames_skipped"]
    raise _no_such_frame(reader.label, index, read)


def _no_such_frame(label: str, index: int, count: int) -> ImageLoadError:
    return ImageLoadError(label, f"frame {index} does not exist: the file has {count} frame(s)",
                          f"a frame from 0 to {count - 1}" if count > 1 else "frame 0 (a single frame)")


def is_video_file(path: str | os.PathLike[str]) -> bool:
    """True for a regular file that is a video container: by content, else by a video suffix when
    the content is no image format either (an image or DICOM named .mp4 is still an image)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False  # the loader reports the file's own error
    if sniff_format(head) is not None:
        return False
    return sniff_video(head) is not None or path.suffix.lower() in VIDEO_SUFFIXES



# ------------------------------------------------------------------------------ DICOM and pages
def _dicom(data: bytes, label: str, fps: float | None, max_pixels: int, budget: PixelBudget | None = None) -> FrameReader:
    frames = DicomFrames(data, label, max_pixels, budget)
    rate, source, problems = (fps, "user", []) if fps else dicom_frame_rate(frames.ds, label)
    info = {"kind": "dicom", "fps": rate, "fps_source": source, "frames_declared": frames.declared}

    def gen(reader: FrameReader) -> Iterator[Frame]:
        for message in problems:
            reader.warn(message)
        if frames.short_read:
            reader.short(f"{frames.short_read}: {len(frames)} of {frames.declared} frame(s) present")
        for i in range(len(frames)):
            try:
                image = frames.frame(i)
            except BudgetExceeded:
                raise
            except ImageLoadError as err:
                if frames.declared == 1:
                    raise  # a single-frame file: its error is the file's error
                reader.skip(err if err.frame is not None else err.with_frame(i))
                continue
            yield Frame(i, i / rate, image)

    return FrameReader(label, info, gen, first=lambda: frames.frame(0))


def dicom_frame_rate(ds: Any, label: str) -> tuple[float, str, list[str]]:
    """(frames/s, attribute used or 'default', one warning line per invalid timing attribute)."""
    problems = []
    for attribute, to_fps in _DICOM_TIMING:
        if attribute not in ds:
            continue
        raw: Any = "<unreadable>"
        try:
            raw = ds[attribute].value  # parsed lazily: a damaged element raises here
            rate = to_fps(float(raw[0] if isinstance(raw, (list, tuple)) else raw))
        except Exception:  # noqa: BLE001 - any unreadable value is "invalid": warn and fall back
            rate = None
        if rate is not None and math.isfinite(rate) and 0 < rate <= MAX_FPS:
            return rate, attribute, problems
        problems.append(f"{label}: invalid {attribute} {str(raw)!r} (expected a positive number"
                        f"{' of milliseconds per frame' if attribute == 'FrameTime' else ' of frames per second'}); "
                        "ignored")
    if problems:
        problems[-1] += f"; using the default {DEFAULT_FPS:g} frames/s"
    return DEFAULT_FPS, "default", problems


def _pages(data: bytes, fmt: str, label: str, fps: float | None, max_pixels: int,
           budget: PixelBudget | None = None) -> FrameReader:
    frames = PilFrames(data, fmt, label, max_pixels, budget)
    rate = fps or DEFAULT_FPS
    info = {"kind": "image" if len(frames) == 1 else "multi-frame image", "fps": rate,
            "fps_source": "user" if fps else "default", "frames_declared": len(frames)}

    def gen(reader: FrameReader) -> Iterator[Frame]:
        for i in range(len(frames)):
            try:
                image = frames.frame(i)
            except BudgetExceeded:
                raise
            except ImageLoadError as err:
                if len(frames) == 1:
                    raise
                reader.skip(err)
                continue
            yield Frame(i, i / rate, image)

    return FrameReader(label, info, gen, first=lambda: frames.frame(0))


def _folder(path: Path, label: str, fps: float | None, max_pixels: int) -> FrameReader:
    files = sorted(list_images(path, recursive=False), key=lambda p: p.name)
    if not files:
        raise ImageLoadError(label, "no frame images in this folder", f"files ending in {sorted(IMAGE_SUFFIXES)}")
    rate = fps or DEFAULT_FPS
    info = {"kind": "folder", "fps": rate, "fps_source": "user" if fps else "default", "frames_declared": len(files)}

    def gen(reader: FrameReader) -> Iterator[Frame]:
        for i, file in enumerate(files):
            try:
                image = load_image(file, max_pixels=max_pixels)
            except ImageLoadError as err:
                reader.skip(err.with_frame(i))
                continue
            yield Frame(i, i / rate, image)

    return FrameReader(label, info, gen)


# ------------------------------------------------------------------------------ video
def _video(source: Path | BytesIO, label: str, fps: float | None, max_pixels: int) -> FrameReader:
    """Frames of a video; the codec's width x height is checked against ``max_pixels`` (the same limit
    as images and DICOM) before any frame is decoded, and every decoded frame before it is converted."""
    try:
        import av
    except ImportError:  # pragma: no cover - depends on the install
        raise ImageLoadError(label, "reading video needs PyAV", "pip install 'fetalplanes[video]'") from None
    try:
        # FFmpeg's stream probe decodes frames to learn their format: a 12000x12000 clip would allocate
        # gigabytes before the size check below. skip_frame=all makes the probe read headers only
        # (the decoder used for the frames afterwards is opened without it).
        container = av.open(str(source) if isinstance(source, Path) else source, options={"skip_frame": "all"})
    except Exception as exc:  # FFmpegError, OSError, ValueError... on a damaged or truncated file
        raise ImageLoadError(label, f"cannot open video ({type(exc).__name__}: {exc})", VIDEO_EXPECTED) from None
    if not container.streams.video:
        container.close()
        raise ImageLoadError(label, "the file has no video stream", VIDEO_EXPECTED)
    stream = container.streams.video[0]
    if stream.codec_context is None:  # a damaged header names no codec FFmpeg can open
        container.close()
        raise ImageLoadError(label, "the video stream's codec cannot be opened (damaged or unsupported)", VIDEO_EXPECTED)
    width, height = stream.codec_context.width, stream.codec_context.height
    if width and height:  # 0 = not in the container's header: each decoded frame is checked below
        try:
            check_size(width, height, label, max_pixels)
        except ImageLoadError:
            container.close()
            raise
    stream.thread_type = "AUTO"  # FFmpeg's own frame/slice threads
    rate, source_name = _video_rate(stream, fps)
    info = {"kind": "video", "codec": stream.codec_context.name, "fps": rate, "fps_source": source_name,
            "frames_declared": int(stream.frames or 0) or None,
            "width": stream.codec_context.width, "height": stream.codec_context.height}

    def gen(reader: FrameReader) -> Iterator[Frame]:
        try:
            yield from _decode_video(container, stream, rate, fps is not None, reader, label, max_pixels)
        finally:
            container.close()

    return FrameReader(label, info, gen)


def _video_rate(stream: Any, fps: float | None) -> tuple[float, str]:
    if fps:
        return fps, "user"
    for attribute in ("average_rate", "guessed_rate"):
        value = getattr(stream, attribute, None)
        rate = float(value) if value else 0.0
        if math.isfinite(rate) and 0 < rate <= MAX_FPS:
            return rate, attribute
    return DEFAULT_FPS, "default"


def _decode_video(container: Any, stream: Any, rate: float, user_rate: bool, reader: FrameReader,
                  label: str, max_pixels: int) -> Iterator[Frame]:
    """Packet by packet, so one damaged packet costs its frame, not the rest of the video."""
    index, packets = 0, container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except Exception as exc:  # the container itself is damaged or truncated here: stop
            reader.short(f"the video ends early after {index} frame(s) ({type(exc).__name__}: {exc})")
            return
        try:
            decoded = packet.decode()
        except Exception as exc:  # a damaged packet: its frame is lost, the next may be fine
            reader.skip(ImageLoadError(label, f"cannot decode video frame ({type(exc).__name__}: {exc})",
                                       VIDEO_EXPECTED, index))
            index += 1
            continue
        for frame in decoded:
            # A stream may change size mid-way (a new SPS): refused before the frame is converted or kept.
            check_size(frame.width, frame.height, label, max_pixels, index)
            t = None if user_rate else frame.time
            time_s = float(t) if t is not None and math.isfinite(t) and t >= 0 else index / rate
            # B-mode is grayscale: decoding straight to 8-bit luma skips a colour conversion.
            image = upright(Image.fromarray(frame.to_ndarray(format="gray")), getattr(frame, "rotation", 0), reader)
            yield Frame(index, time_s, image)
            index += 1


# Display-matrix rotation (degrees, counter-clockwise, as FFmpeg reports it) -> the PIL transpose
# that shows the frame as players do; phones store sideways frames with such a matrix.
_ROTATIONS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def upright(image: Image.Image, rotation: float | None, reader: FrameReader | None = None) -> Image.Image:
    """A video frame turned as its display matrix says (``frame.rotation`` of PyAV, degrees
    counter-clockwise; multiples of 90 only, as phones write them), the way players and the
    EXIF rule for JPEGs show it. ``reader.info`` then reports the displayed width/height and the
    ``rotation``; a flip in the matrix is not applied."""
    turn = _ROTATIONS.get(int(round(rotation or 0)) % 360)
    if reader is not None and "rotation" not in reader.info:
        reader.info["rotation"] = int(round(rotation or 0)) % 360
        if turn in (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270):
            reader.info["width"], reader.info["height"] = reader.info.get("height"), reader.info.get("width")
    return image.transpose(turn) if turn is not None else image
