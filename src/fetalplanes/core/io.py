"""The one image loader: PNG, JPEG, BMP, TIFF, GIF, WebP and DICOM -> a decoded PIL image.

Training, evaluation, the torch-free edge runtime, the CLI and the web service all read
images through :func:`load_image` (or :func:`load_frames` for cine loops and multi-page
files), so every entry point accepts the same files and fails the same way: with an
:class:`ImageLoadError` whose message names the file, says what is wrong and what was
expected. The format is detected from the content (magic bytes), never from the suffix,
because uploaded and exported files are often misnamed.

This module is part of ``core`` and must stay torch-free: stdlib, numpy, Pillow and
pydicom only. It does no resizing or intensity normalisation beyond what is needed to
turn DICOM pixel data into a displayable 8-bit image; 16-bit PNG/TIFF data is returned
as 16-bit and rescaled later by :mod:`fetalplanes.core.preprocess`.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "BadFilesError",
    "ImageLoadError",
    "check_files",
    "is_image_file",
    "list_images",
    "load_frames",
    "load_image",
    "sniff_format",
]

logger = logging.getLogger(__name__)

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]

DEFAULT_MAX_PIXELS: int = 50_000_000
"""Largest accepted width*height per frame: far above any ultrasound frame, far below
what would exhaust memory when a hostile upload claims a huge size in a tiny file."""

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".gif", ".webp"}
)

EXPECTED = "a PNG, JPEG, BMP, TIFF or DICOM image"

# sniff_format name -> Pillow plugin name; passing it to Image.open stops Pillow from
# guessing another format when the data is damaged.
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "tiff": "TIFF", "gif": "GIF", "webp": "WEBP"}

# Modes returned unchanged: 8-bit gray, gray+alpha, 16/32-bit gray, RGB, RGBA.
_KEPT_MODES = frozenset({"L", "LA", "I;16", "I", "RGB", "RGBA"})

# BITMAPINFOHEADER sizes Pillow understands; checking them keeps a text file that happens
# to start with "BM" from being reported as a corrupt bitmap.
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})



class ImageLoadError(ValueError):
    """An image file cannot be loaded; the message names the file, the reason and what was expected.

    Construct as ``ImageLoadError(name, reason, expected=...)``; a single preformatted
    message, ``ImageLoadError("x.png: ...")``, is accepted too.
    """

    def __init__(self, name: str, reason: str | None = None, expected: str = EXPECTED) -> None:
        message = name if reason is None else f"{name}: {reason}; expected {expected}"
        super().__init__(message)
        self.name = name
        self.reason = reason if reason is not None else name
        self.expected = expected
        self._init_args = (name, reason, expected)

    def __reduce__(self) -> tuple:
        # Default exception pickling replays self.args (the message) as the only argument,
        # which would lose .reason in worker processes (e.g. data-loader workers).
        return (type(self), self._init_args)


class BadFilesError(ValueError):
    """Raised by :func:`check_files`; ``.bad`` lists every ``(name, reason)`` pair."""

    def __init__(self, bad: list[tuple[str, str]]) -> None:
        self.bad = list(bad)
        lines = "\n".join(f"  {name}: {reason}" for name, reason in self.bad)
        header = f"{len(self.bad)} image file(s) cannot be loaded (expected {EXPECTED} each):"
        super().__init__(f"{header}\n{lines}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.bad,))


# --------------------------------------------------------------------------- format sniffing


def sniff_format(data: bytes) -> str | None:
    """Format from magic bytes: 'png', 'jpeg', 'bmp', 'tiff', 'gif', 'webp', 'dicom' or None.

    'dicom' means "DICM" at offset 128 (a Part 10 file) or, for files written without the
    128-byte preamble, a first element in group 0002/0008 that parses as a DICOM tag.
    """
    head = bytes(data[:132])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in _BMP_HEADER_SIZES:
        return "bmp"
    if head[128:132] == b"DICM" or _looks_like_headerless_dicom(head):
        return "dicom"
    return None


def _looks_like_headerless_dicom(head: bytes) -> bool:
    """True when the bytes start with a little-endian group 0002/0008 element.

    Some scanners and old PACS exports omit the preamble; only such files are read with
    ``force=True``, so arbitrary binary junk is never handed to pydicom's lenient parser.
    """
    if len(head) < 8:
        return False
    group, _element = struct.unpack_from("<HH", head)
    if group not in (0x0002, 0x0008):
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():  # explicit VR
        return True
    return struct.unpack_from("<I", head, 4)[0] < 0x10000  # implicit VR: a plausible length


def _looks_like_text(head: bytes) -> bool:
    text = head[:512].decode("utf-8", errors="replace")
    if "\x00" in text or text.count("\ufffd") > 3:
        return False
    return all(ch.isprintable() or ch.isspace() or ch == "\ufffd" for ch in text)


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


def _check_size(width: int, height: int, label: str, max_pixels: int) -> None:
    """Reject empty and oversized frames from the header, before any pixel is decoded."""
    if width <= 0 or height <= 0:
        raise ImageLoadError(label, f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageLoadError(
            label,
            f"image is {width}x{height} = {width * height:,} pixels (possible decompression bomb)",
            f"at most {max_pixels:,} pixels (max_pixels)",
        )


# --------------------------------------------------------------------------- public loaders


def load_image(
    source: Source,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
) -> Image.Image:
    """Load one image (the first frame of a multi-frame file), fully decoded.

    The mode is 'L', 'LA', 'I;16', 'I', 'RGB' or 'RGBA'; palettes are resolved, 16-bit
    gray stays 16-bit, DICOM becomes 8-bit 'L' (VOI/window applied, MONOCHROME1 inverted)
    or 'RGB'. EXIF orientation is applied so the pixels match what a viewer shows.
    Raises :class:`ImageLoadError` for anything that is not a loadable image.
    """
    return _load(source, name=name, max_pixels=max_pixels, max_bytes=max_bytes, first_only=True)[0]


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
    source: Source, *, name: str | None, max_pixels: int, max_bytes: int | None, first_only: bool
) -> list[Image.Image]:
    data, label = _read_source(source, name, max_bytes)
    fmt = sniff_format(data)
    if fmt is None:
        what = "the content looks like text" if _looks_like_text(data) else "unrecognised binary content"
        raise ImageLoadError(label, f"not an image: {what}")
    if fmt == "dicom":
        from fetalplanes.core.dicom import dicom_frames  # lazy: dicom.py imports this module

        return dicom_frames(data, label, max_pixels, first_only)
    return _pil_frames(data, fmt, label, max_pixels, first_only)


# --------------------------------------------------------------------------- Pillow formats


@contextmanager
def _pillow_errors(label: str, fmt: str, max_pixels: int) -> Iterator[None]:
    """Turn every Pillow failure inside the block into an ImageLoadError naming `label`.

    Pillow's own bomb guard only warns between MAX_IMAGE_PIXELS and twice that; it is made
    an error here, locally, because changing warning filters or MAX_IMAGE_PIXELS globally
    would affect every other user of Pillow in the process.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            expected = f"at most {max_pixels:,} pixels"
            raise ImageLoadError(label, f"too many pixels ({exc})", expected) from None
        except UnidentifiedImageError:
            reason = f"starts like {fmt.upper()} but its header cannot be parsed"
            raise ImageLoadError(label, reason) from None
        # Pillow's decoders raise a zoo of types on malformed input (OSError, SyntaxError,
        # ValueError, EOFError, struct.error, IndexError...): all mean "unreadable file".
        except Exception as exc:
            reason = f"corrupt or truncated {fmt.upper()} data ({type(exc).__name__}: {exc})"
            raise ImageLoadError(label, reason) from exc


def _pil_frames(data: bytes, fmt: str, label: str, max_pixels: int, first_only: bool) -> list[Image.Image]:
    with _pillow_errors(label, fmt, max_pixels):
        image = Image.open(BytesIO(data), formats=[_PIL_FORMATS[fmt]])
        count = 1 if first_only else getattr(image, "n_frames", 1)
        frames = []
        for index in range(count):
            if index:
                image.seek(index)
            _check_size(*image.size, label, max_pixels)  # header size, before decoding
            image.load()
            frames.append(_finish(image if count == 1 else image.copy()))
    return frames


def _finish(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation, then bring the mode into the documented set."""
    # Browsers honour EXIF orientation; without this, overlays drawn on our pixels would be
    # rotated relative to the image the clinician sees.
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:  # damaged EXIF must not make intact pixels unreadable
        logger.debug("ignoring unreadable EXIF orientation: %s", exc)
    return _normalise_mode(image)


def _normalise_mode(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in _KEPT_MODES:
        return image
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")
    if mode == "1":
        return image.convert("L")
    if mode in ("I;16B", "I;16L", "I;16N"):
        # Other byte orders of 16-bit gray: same values, native 'I;16' mode.
        return Image.fromarray(np.asarray(image).astype(np.uint16))
    if mode == "F":
        # Float TIFFs have no fixed range; min-max to 8-bit is the only neutral choice.
        values = np.asarray(image)
        return Image.fromarray(_scale_to_uint8(values, *_finite_range(values)))
    if mode in ("RGBa", "La"):
        return image.convert("RGBA")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX


def _finite_range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return 0.0, 0.0
    return float(finite.min()), float(finite.max())


def _scale_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of [lo, hi] to [0, 255], clipped; a flat range gives black."""
    if not hi > lo:
        return np.zeros(np.shape(values), dtype=np.uint8)
    x = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=lo, posinf=hi, neginf=lo)
    return np.rint((np.clip(x, lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.uint8)


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
    good: list[Path] = []
    bad: list[tuple[str, str]] = []
    for item in paths:
        path = Path(item)
        try:
            load_image(path, max_pixels=max_pixels)
        except ImageLoadError as exc:
            bad.append((str(path), exc.reason))
        else:
            good.append(path)
    if bad and not skip_bad:
        raise BadFilesError(bad)
    if bad:
        listing = "\n".join(f"  {name}: {reason}" for name, reason in bad)
        total = len(bad) + len(good)
        logger.warning("skipping %d of %d image file(s) that cannot be loaded:\n%s", len(bad), total, listing)
    return good
