"""The one image loader: every accepted format of ``core.formats.FORMATS`` -> a decoded PIL image.

Training, evaluation, the torch-free edge runtime, the CLI and the web service all read
images through :func:`load_image` (or :func:`load_frames` for cine loops and multi-page
files), so every entry point accepts the same files and fails the same way: with an
:class:`ImageLoadError` whose message names the file, says what is wrong and what was
expected (and the frame, for multi-frame files). The format is detected from the content
in a fixed order (:mod:`fetalplanes.core.formats`: the DICOM marker first, then the image
codecs), never from the suffix, because uploaded and exported files are often misnamed.
The pixel limit is checked on every frame's own header before it is decoded.

Intensities follow the one rule of :mod:`fetalplanes.core.intensity`: 8-bit as stored,
DICOM through its LUTs to 8-bit; 16-bit gray PNG/TIFF stays 'I;16' here (full precision)
and becomes 8-bit by its bit depth (v / 257) in :func:`fetalplanes.core.preprocess.to_gray`.
For a per-frame robust iterator over cine loops and video see :mod:`fetalplanes.core.frames`.

This module is part of ``core`` and must stay torch-free: stdlib, numpy, Pillow and
pydicom only.
"""

from __future__ import annotations

import logging
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from io import BytesIO
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fetalplanes.core.dicom import dicom_frames
from fetalplanes.core.errors import EXPECTED, BadFilesError, ImageLoadError
from fetalplanes.core.formats import (DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, check_size, format_named, looks_like_text,
                                      sniff_format)
from fetalplanes.core.intensity import scale_by_bits, scale_float
from fetalplanes.core.limits import PixelBudget

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "EXPECTED",
    "IMAGE_SUFFIXES",
    "BadFilesError",
    "ImageLoadError",
    "PilFrames",
    "bad_entry",
    "check_files",
    "expand_inputs",
    "is_image_file",
    "list_images",
    "load_frames",
    "load_image",
    "report_bad_files",
    "screen_files",
    "sniff_format",
]

logger = logging.getLogger(__name__)

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]


# Modes returned unchanged: 8-bit gray, gray+alpha, 16-bit gray, RGB, RGBA.
_KEPT_MODES = frozenset({"L", "LA", "I;16", "RGB", "RGBA"})


# --------------------------------------------------------------------------- reading bytes


def _read_source(source: Source, name: str | None, max_bytes: int | None) -> tuple[bytes, str]:
    """Bytes of `source` (read once) and the name to use in messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), name or "<bytes>"
    elif isinstance(source, (str, os.PathLike)):
        label = name or os.fspath(source)
        data = _read_file(Path(source), label, max_bytes)
    else:
        raise TypeError(f"source must be a path or bytes, not {type(source).__name__}")
    if not data:
        raise ImageLoadError(label, "empty file (0 bytes)")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageLoadError(label, f"{len(data):,} bytes is too large", f"at most {max_bytes:,} bytes")
    return data, label


def _read_file(path: Path, label: str, max_bytes: int | None) -> bytes:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ImageLoadError(label, "file not found") from None
    except OSError as exc:
        raise ImageLoadError(label, f"cannot access file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageLoadError(label, "is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        # Reading a FIFO or device could block forever or never end.
        raise ImageLoadError(label, "is not a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        # Checked before reading so a huge file is never pulled into memory.
        raise ImageLoadError(label, f"{info.st_size:,} bytes is too large", f"at most {max_bytes:,} bytes")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageLoadError(label, f"cannot read file ({exc.strerror or exc})") from None


# --------------------------------------------------------------------------- public loaders


def load_image(
    source: Source,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
    budget: PixelBudget | None = None,
) -> Image.Image:
    """Load one image (the first frame of a multi-frame file), fully decoded.

    ``budget`` (:class:`~fetalplanes.core.limits.PixelBudget`, e.g. one per service request) is
    charged with the frame's header size before it is decoded; once spent, frames are refused.

    The mode is 'L', 'LA', 'I;16', 'I', 'RGB' or 'RGBA'; palettes are resolved, 16-bit
    gray stays 16-bit, DICOM becomes 8-bit 'L' (VOI/window applied, MONOCHROME1 inverted)
    or 'RGB'. EXIF orientation is applied so the pixels match what a viewer shows.
    Raises :class:`ImageLoadError` for anything that is not a loadable image.
    """
    return _load(source, name=name, max_pixels=max_pixels, max_bytes=max_bytes, first_only=True, budget=budget)[0]


def load_frames(
    source: Source,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
) -> list[Image.Image]:
    """All frames of a multi-frame DICOM (cine), multi-page TIFF, animated GIF/WebP/PNG.

    A single image gives a one-element list. Frames are converted as in :func:`load_image`.
    """
    return _load(source, name=name, max_pixels=max_pixels, max_bytes=max_bytes, first_only=False)


def _load(
    source: Source, *, name: str | None, max_pixels: int, max_bytes: int | None, first_only: bool,
    budget: PixelBudget | None = None,
) -> list[Image.Image]:
    data, label = _read_source(source, name, max_bytes)
    fmt = sniff_format(data)
    if fmt is None:
        what = "the content looks like text" if looks_like_text(data) else "unrecognised binary content"
        raise ImageLoadError(label, f"not an image: {what}")
    if not format_named(fmt).accepted:
        raise ImageLoadError(label, format_named(fmt).refusal)
    if fmt == "dicom":
        return dicom_frames(data, label, max_pixels, first_only, budget)
    return _pil_frames(data, fmt, label, max_pixels, first_only, budget)


# --------------------------------------------------------------------------- Pillow formats


@contextmanager
def _pillow_errors(label: str, fmt: str, max_pixels: int, frame: int | None = None) -> Iterator[None]:
    """Turn every Pillow failure inside the block into an ImageLoadError naming `label` (and `frame`).

    Only calls into Pillow go inside the block, so any exception there is the decoder's verdict
    on the file; this project's own code runs outside it, where a bug shows as a bug.

    Pillow's own bomb guard only warns between MAX_IMAGE_PIXELS and twice that; it is made
    an error here, locally, because changing warning filters or MAX_IMAGE_PIXELS globally
    would affect every other user of Pillow in the process.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            expected = f"at most {max_pixels:,} pixels"
            raise ImageLoadError(label, f"too many pixels ({exc})", expected, frame) from None
        except UnidentifiedImageError:
            reason = f"starts like {fmt.upper()} but its header cannot be parsed"
            raise ImageLoadError(label, reason, frame=frame) from None
        # Pillow's decoders raise a zoo of types on malformed input (OSError, SyntaxError,
        # ValueError, EOFError, struct.error, IndexError, MemoryError...): all mean "unreadable file".
        except Exception as exc:
            reason = f"corrupt or truncated {fmt.upper()} data ({type(exc).__name__}: {exc})"
            raise ImageLoadError(label, reason, frame=frame) from None


class PilFrames:
    """The frames (pages) of a Pillow-readable file; ``frame(i)`` decodes one, checked first.

    ``declared`` is the frame count in the header (1 for a still image). Frames must be read
    in order (GIF/APNG frames build on the previous one).
    """

    def __init__(self, data: bytes, fmt: str, label: str, max_pixels: int, budget: PixelBudget | None = None) -> None:
        self.fmt, self.label, self.max_pixels, self.budget = fmt, label, max_pixels, budget
        self.short_read: str | None = None
        with _pillow_errors(label, fmt, max_pixels):
            # The table's plugin only: Pillow must not guess another format for damaged data.
            self._image = Image.open(BytesIO(data), formats=[format_named(fmt).pillow_plugin])
            self.declared = self.count = max(1, int(getattr(self._image, "n_frames", 1)))

    def __len__(self) -> int:
        return self.count

    def frame(self, index: int) -> Image.Image:
        frame = index if self.count > 1 else None
        image = self._image
        # Only Pillow's own calls sit inside the guards: an exception from this project's code
        # (the size check, the budget, the mode rule) is a refusal or a bug, never "corrupt data".
        with self._decoding(frame):
            if index:
                image.seek(index)
            size = image.size
        check_size(*size, self.label, self.max_pixels, frame)  # header size, before decoding
        if self.budget is not None:
            self.budget.charge(*size, self.label, frame)
        with self._decoding(frame):
            image.load()
            image = image if self.count == 1 else image.copy()
        _orient(image)
        return _normalise_mode(image, self.label, lambda: self._decoding(frame))

    def _decoding(self, frame: int | None) -> AbstractContextManager[None]:
        return _pillow_errors(self.label, self.fmt, self.max_pixels, frame)


def _pil_frames(data: bytes, fmt: str, label: str, max_pixels: int, first_only: bool,
                budget: PixelBudget | None = None) -> list[Image.Image]:
    frames = PilFrames(data, fmt, label, max_pixels, budget)
    return [frames.frame(i) for i in range(1 if first_only else len(frames))]


def _orient(image: Image.Image) -> None:
    """Apply the EXIF orientation in place."""
    # Browsers honour EXIF orientation; without this, overlays drawn on our pixels would be
    # rotated relative to the image the clinician sees.
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:  # Pillow's EXIF parser on damaged tags: intact pixels stay readable
        logger.debug("ignoring unreadable EXIF orientation: %s", exc)


def _normalise_mode(image: Image.Image, label: str,
                    decoding: Callable[[], AbstractContextManager[None]]) -> Image.Image:
    """Modes into {'L', 'LA', 'I;16', 'RGB', 'RGBA'}, by the intensity rule (core.intensity).

    ``decoding()`` guards Pillow's conversions (a mode Pillow cannot convert is the file's fault);
    the numpy rules after them run unguarded."""
    mode = image.mode
    if mode in _KEPT_MODES:
        return image
    with decoding():
        if mode in ("P", "PA"):
            has_alpha = mode == "PA" or "transparency" in image.info
            return image.convert("RGBA" if has_alpha else "RGB")
        if mode == "1":
            return image.convert("L")
        if mode in ("RGBa", "La"):
            return image.convert("RGBA")
        if mode not in ("I;16B", "I;16L", "I;16N", "I", "F"):
            return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX
        values = np.asarray(image)
    if mode == "I":
        return _from_int32(values, image)
    if mode == "F":
        return Image.fromarray(scale_float(values, label))
    # Other byte orders of 16-bit gray: same values, native 'I;16' mode.
    return Image.fromarray(values.astype(np.uint16))


def _from_int32(values: np.ndarray, image: Image.Image) -> Image.Image:
    """Pillow's 32-bit integer mode (``values``, read from ``image``): 16-bit data stays 16-bit;
    wider data is scaled by its bits."""
    tag = getattr(image, "tag_v2", None)
    declared = tag.get(258) if tag is not None else None  # TIFF BitsPerSample
    bits = int(declared[0] if isinstance(declared, tuple) else declared) if declared else None
    if bits is None:
        bits = 16 if values.size == 0 or (values.min() >= 0 and values.max() <= 65535) else 32
    if bits <= 16 and values.size and values.min() >= 0:
        return Image.fromarray(values.clip(0, 65535).astype(np.uint16))
    signed = bool(values.size and values.min() < 0)
    return Image.fromarray(scale_by_bits(values, bits, signed))


# --------------------------------------------------------------------------- folders and checks


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True for a supported suffix (any case); hidden files such as macOS '._x.png' are excluded."""
    p = Path(path)
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES


def list_images(root: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Sorted image files under `root` (by suffix); hidden files and hidden folders are skipped."""
    base = Path(root)
    if not base.is_dir():
        kind = "no such directory" if not base.exists() else "not a directory"
        raise NotADirectoryError(f"{base}: {kind}; expected a folder of images")
    if not recursive:
        return sorted(p for p in base.iterdir() if is_image_file(p) and not p.is_dir())
    found: list[Path] = []
    seen: set[str] = set()
    # Datasets are often assembled from symlinked folders, so links are followed, each real
    # folder once to survive link cycles.
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath, f) for f in filenames if is_image_file(f))
    return sorted(found)


def expand_inputs(paths: Iterable[str | os.PathLike[str]], missing_ok: bool = False) -> list[Path]:
    """Files as given, folders replaced by their images (:func:`list_images`, recursive);
    FileNotFoundError for a missing path unless ``missing_ok`` (then it is kept, and its reader
    reports it like any other bad file)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += list_images(p)
        elif p.exists() or missing_ok:
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return files


def check_files(
    paths: Iterable[str | os.PathLike[str]],
    *,
    skip_bad: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[Path]:
    """Load every file once and report all failures together, not just the first.

    Raises :class:`BadFilesError` listing every bad file, unless `skip_bad`, in which case
    the bad files are logged as a warning and only the good paths are returned.
    """
    return screen_files(paths, skip_bad=skip_bad, max_pixels=max_pixels)[0]


def screen_files(
    paths: Iterable[str | os.PathLike[str]],
    *,
    skip_bad: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode: Callable[[Path], object] | None = None,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """(readable paths, [(file, reason)] for the unreadable ones), each file decoded once (its first
    frame, as :func:`load_image`, or by ``decode``, which raises ``ImageLoadError``); the bad ones
    handled by :func:`report_bad_files`."""
    good: list[Path] = []
    bad: list[tuple[str, str]] = []
    for item in paths:
        path = Path(item)
        try:
            decode(path) if decode is not None else load_image(path, max_pixels=max_pixels)
        except ImageLoadError as exc:
            bad.append(bad_entry(exc, path))
        else:
            good.append(path)
    report_bad_files(bad, len(good) + len(bad), skip_bad)
    return good, bad


def bad_entry(err: ImageLoadError, path: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """``(file, reason)`` of a load error, the frame named in the reason when there is one."""
    reason = err.reason if err.frame is None else f"frame {err.frame}: {err.reason}"
    return (os.fspath(path) if path is not None else err.file), reason


def report_bad_files(bad: Sequence[tuple[str, str]], total: int, skip_bad: bool) -> None:
    """The one rule for unreadable inputs of a batch command (scan, evaluate, explain, training).

    Every bad file is listed at once, one line each (file: reason): raised as
    :class:`BadFilesError` unless ``skip_bad``, else logged as one warning and left out.
    """
    if bad and not skip_bad:
        raise BadFilesError(list(bad))
    if bad:
        listing = "\n".join(f"  {name}: {reason}" for name, reason in bad)
        logger.warning("skipping %d of %d image file(s) that cannot be loaded:\n%s", len(bad), total, listing)
