"""The one format table (:data:`FORMATS`), detection by content, and the size limit read from
each codestream's own header.

Every boundary reads :data:`FORMATS`: the loaders (``core.io``, ``core.frames``), the folder
scan (:data:`IMAGE_SUFFIXES`), the service's 415 check and its ``/v1/model`` list
(:func:`accepted_images`), the OpenAPI text and every "expected ..." of an error
(:data:`EXPECTED_TEXT`; ``core.errors.EXPECTED`` is the same text, checked by a test, because
``errors`` sits below this module). A row says the format's name, suffixes, magic number, whether
it is a still or may hold several frames (or is a video), its decoder and what must be installed.

AVIF is accepted: Pillow (>= 11.2, with libavif) decodes it like any other still, and phones
save stills as AVIF. HEIC/HEIF is refused with a one-line reason: Pillow needs the third-party
``pillow-heif`` plugin for it, which is not a dependency. Neither is ever called "a video", although
both share the ISO base media file container with MP4: the ``ftyp`` brand decides.

Detection order (fixed, the same for files and uploaded bytes):

1. DICOM Part 10: ``DICM`` at byte 128. First, because the 128-byte preamble may hold
   anything, including a TIFF header that some vendors put there on purpose
   (PS3.10 section 7.1); only the marker decides.
2. Image codecs by magic number, in table order: PNG, JPEG, TIFF, GIF, WebP, BMP, AVIF, HEIC.
3. DICOM without preamble (old exports): a first little-endian element in group
   0002/0008 that parses as a DICOM tag.

Video containers (AVI, MP4/MOV, Matroska/WebM, MPEG) are recognised by
:func:`sniff_video` for the frame iterator; they are never single images.

The pixel limit is checked against the header of what is about to be decoded: the
PNG/JPEG/TIFF header through Pillow's ``Image.open`` (which reads only the header), and
for each compressed DICOM frame the JPEG SOF / JPEG-LS SOF55 / JPEG 2000 SIZ marker of
that frame's codestream (ITU-T T.81 B.2.2, T.87 C.2.2, T.800 A.5.1), because a small
DICOM Rows/Columns does not stop a codestream from declaring 12000x12000.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from fetalplanes.core.errors import ImageLoadError
from fetalplanes.core.limits import LIMITS

__all__ = ["DEFAULT_MAX_PIXELS", "EXPECTED_TEXT", "FORMATS", "IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "Format",
           "accepted_images", "check_size", "codestream_size", "format_named", "sniff_format", "sniff_video"]

DEFAULT_MAX_PIXELS: int = LIMITS.max_pixels
"""Largest accepted width*height per frame (the limits table, :mod:`fetalplanes.core.limits`):
far above any ultrasound frame, far below what would exhaust memory when a hostile upload
claims a huge size in a tiny file."""


@dataclass(frozen=True)
class Format:
    """One row of the format table.

    ``name``: what :func:`sniff_format` / :func:`sniff_video` return; ``label``: the name in
    messages; ``frames``: 'still' (one image), 'multi' (a still or several frames: cine,
    multi-page, animation) or 'video'; ``decoder``: the library that decodes it (and Pillow's
    plugin name after a colon); ``needs``: what must be installed beyond the core install
    (None: nothing); ``accepted``: False for a format that is recognised only to be refused
    with a clear reason (``refusal``).
    """

    name: str
    label: str
    suffixes: tuple[str, ...]
    magic: Callable[[bytes], bool]
    frames: Literal["still", "multi", "video"]
    decoder: str
    needs: str | None = None
    accepted: bool = True
    refusal: str = ""

    @property
    def pillow_plugin(self) -> str | None:
        """Pillow's plugin name for this format (passed to ``Image.open(formats=...)``), else None."""
        lib, _, plugin = self.decoder.partition(":")
        return plugin if lib == "pillow" else None


def _ftyp_brands(head: bytes) -> frozenset[bytes]:
    """Major and compatible brands of an ISO base media file's ``ftyp`` box (MP4, MOV, AVIF,
    HEIC; ISO/IEC 14496-12 4.3), as far as ``head`` reaches; empty for another file."""
    if head[4:8] != b"ftyp":
        return frozenset()
    end = min(len(head), struct.unpack_from(">I", head, 0)[0])
    return frozenset({head[8:12], *(head[i : i + 4] for i in range(16, end - 3, 4))})


_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})


def _is_avif(head: bytes) -> bool:
    return bool(_ftyp_brands(head) & _AVIF_BRANDS)


def _is_heif(head: bytes) -> bool:
    brands = _ftyp_brands(head)
    return bool(brands & _HEIF_BRANDS) and not brands & _AVIF_BRANDS

FORMATS: tuple[Format, ...] = (
    Format("dicom", "DICOM", (".dcm", ".dicom"), lambda h: h[128:132] == b"DICM", "multi", "pydicom"),
    Format("png", "PNG", (".png",), lambda h: h.startswith(b"\x89PNG\r\n\x1a\n"), "multi", "pillow:PNG"),
    Format("jpeg", "JPEG", (".jpg", ".jpeg"), lambda h: h.startswith(b"\xff\xd8\xff"), "still", "pillow:JPEG"),
    Format("tiff", "TIFF", (".tif", ".tiff"), lambda h: h[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
           "multi", "pillow:TIFF"),
    Format("gif", "GIF", (".gif",), lambda h: h[:6] in (b"GIF87a", b"GIF89a"), "multi", "pillow:GIF"),
    Format("webp", "WebP", (".webp",), lambda h: h[:4] == b"RIFF" and h[8:12] == b"WEBP", "multi", "pillow:WEBP"),
    Format("bmp", "BMP", (".bmp",), lambda h: _is_bmp(h), "still", "pillow:BMP"),
    Format("avif", "AVIF", (".avif",), _is_avif, "multi", "pillow:AVIF",
           needs="Pillow built with libavif (the PyPI wheels since Pillow 11.2)"),
    Format("heic", "HEIC", (".heic", ".heif"), _is_heif, "still", "pillow-heif",
           needs="pillow-heif (not a dependency)", accepted=False,
           refusal="a HEIC/HEIF image, which is not supported (Pillow needs the pillow-heif plugin); "
                   "export it as PNG or JPEG"),
    # Video containers: read frame by frame by `stream` (PyAV), never as one image.
    Format("avi", "AVI", (".avi",), lambda h: h[:4] == b"RIFF" and h[8:12] == b"AVI ", "video", "pyav", "video"),
    Format("mp4", "MP4/MOV", (".mp4", ".m4v", ".mov", ".3gp"),
           lambda h: h[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip") and not (_is_avif(h) or _is_heif(h)),
           "video", "pyav", "video"),
    Format("matroska", "MKV/WebM", (".mkv", ".webm"), lambda h: h[:4] == b"\x1a\x45\xdf\xa3", "video", "pyav",
           "video"),
    Format("mpeg", "MPEG", (".mpg", ".mpeg"), lambda h: h[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"),
           "video", "pyav", "video"),
    Format("asf", "WMV/ASF", (".wmv", ".asf"), lambda h: h[:4] == b"\x30\x26\xb2\x75", "video", "pyav", "video"),
)
_IMAGES = tuple(f for f in FORMATS if f.frames != "video")
_VIDEOS = tuple(f for f in FORMATS if f.frames == "video")


def format_named(name: str) -> Format:
    """The table row called ``name``; KeyError listing the names for another."""
    for f in FORMATS:
        if f.name == name:
            return f
    raise KeyError(f"unknown format {name!r}; known: {[f.name for f in FORMATS]}")


def accepted_images() -> tuple[Format, ...]:
    """The image formats every reader accepts, in the table's order."""
    return tuple(f for f in _IMAGES if f.accepted)


def _expected_text() -> str:
    labels = [f.label for f in accepted_images() if f.name != "dicom"]
    return f"a {', '.join(labels)} or DICOM image"


EXPECTED_TEXT: str = _expected_text()
"""'a PNG, JPEG, ... or DICOM image': the "expected ..." of every input error."""
IMAGE_SUFFIXES: frozenset[str] = frozenset(s for f in accepted_images() for s in f.suffixes)
"""Suffixes a folder scan takes as images (detection itself is by content)."""
VIDEO_SUFFIXES: tuple[str, ...] = tuple(s for f in _VIDEOS for s in f.suffixes)
"""Suffixes taken as video when the content is no image format either."""

# BITMAPINFOHEADER sizes Pillow understands; checking them keeps a text file that happens
# to start with "BM" from being reported as a corrupt bitmap.
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})

# JPEG start-of-frame markers (T.81 table B.1: SOF0-3, 5-7, 9-11, 13-15) and JPEG-LS SOF55.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
# Markers without a length field (T.81 table B.1): TEM, RSTn, SOI, EOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})


def sniff_format(data: bytes) -> str | None:
    """Image format from content, in the table's order (see module doc): a :data:`FORMATS` name
    ('dicom', 'png', 'jpeg', 'tiff', 'gif', 'webp', 'bmp', 'avif', 'heic') or None. A refused
    format ('heic') is named too, so its reader can say why it is refused."""
    head = bytes(data[:132])
    for f in _IMAGES:
        if f.magic(head):
            return f.name
    if _looks_like_headerless_dicom(head):
        return "dicom"
    return None


def sniff_video(data: bytes) -> str | None:
    """Video container from content: 'avi', 'mp4' (also MOV/M4V/3GP), 'matroska', 'mpeg' or None.
    An AVIF or HEIC still (same ISO base media container as MP4) is not a video."""
    head = bytes(data[:132])
    return next((f.name for f in _VIDEOS if f.magic(head)), None)


def _is_bmp(head: bytes) -> bool:
    return head[:2] == b"BM" and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in _BMP_HEADER_SIZES


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


def looks_like_text(head: bytes) -> bool:
    """True when the first bytes read as printable UTF-8 text (a CSV or report, not an image)."""
    text = head[:512].decode("utf-8", errors="replace")
    if "\x00" in text or text.count("\ufffd") > 3:
        return False
    return all(ch.isprintable() or ch.isspace() or ch == "\ufffd" for ch in text)


def check_size(width: int, height: int, label: str, max_pixels: int, frame: int | None = None) -> None:
    """Reject empty and oversized frames from a header, before any pixel is decoded.

    Raises :class:`ImageLoadError` naming ``label`` (and ``frame``).
    """
    if width <= 0 or height <= 0:
        raise ImageLoadError(label, f"image has zero size ({width}x{height})", frame=frame)
    if width * height > max_pixels:
        raise ImageLoadError(
            label,
            f"image is {width}x{height} = {width * height:,} pixels (possible decompression bomb)",
            f"at most {max_pixels:,} pixels (max_pixels)",
            frame,
        )


def codestream_size(codestream: bytes) -> tuple[int, int] | None:
    """(width, height) declared by a JPEG, JPEG-LS or JPEG 2000 codestream header, else None.

    Reads only marker segments up to the first SOF/SIZ, so it costs nothing even for a
    codestream that declares a huge frame. None means "no such header found" (e.g. not a
    JPEG-family codestream, or a height deferred to a DNL marker).
    """
    data = bytes(codestream[:65536])
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    at = data.find(b"\xff\x4f\xff\x51")  # J2K SOC + SIZ; also found inside a JP2 wrapper
    if at >= 0 and len(data) >= at + 4 + 2 + 2 + 16:
        xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", data, at + 8)
        return max(0, xsiz - xo), max(0, ysiz - yo)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None  # not at a marker: damaged header
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return (width, height) if height else None
        if marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    return None
