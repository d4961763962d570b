"""Format detection by content, and the size limit read from each codestream's own header.

Detection order (fixed, the same for files and uploaded bytes):

1. DICOM Part 10: ``DICM`` at byte 128. First, because the 128-byte preamble may hold
   anything, including a TIFF header that some vendors put there on purpose
   (PS3.10 section 7.1); only the marker decides.
2. Image codecs by magic number: PNG, JPEG, TIFF, GIF, WebP, BMP.
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

from fetalplanes.core.errors import ImageLoadError
from fetalplanes.core.limits import LIMITS

__all__ = ["DEFAULT_MAX_PIXELS", "check_size", "codestream_size", "sniff_format", "sniff_video"]

DEFAULT_MAX_PIXELS: int = LIMITS.max_pixels
"""Largest accepted width*height per frame (the limits table, :mod:`fetalplanes.core.limits`):
far above any ultrasound frame, far below what would exhaust memory when a hostile upload
claims a huge size in a tiny file."""

# BITMAPINFOHEADER sizes Pillow understands; checking them keeps a text file that happens
# to start with "BM" from being reported as a corrupt bitmap.
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})

# JPEG start-of-frame markers (T.81 table B.1: SOF0-3, 5-7, 9-11, 13-15) and JPEG-LS SOF55.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
# Markers without a length field (T.81 table B.1): TEM, RSTn, SOI, EOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})


def sniff_format(data: bytes) -> str | None:
    """Format from content: 'dicom', 'png', 'jpeg', 'tiff', 'gif', 'webp', 'bmp' or None (see module doc)."""
    head = bytes(data[:132])
    if head[128:132] == b"DICM":
        return "dicom"
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
    if _looks_like_headerless_dicom(head):
        return "dicom"
    return None


def sniff_video(data: bytes) -> str | None:
    """Video container from content: 'avi', 'mp4' (also MOV/M4V/3GP), 'matroska', 'mpeg' or None."""
    head = bytes(data[:16])
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "mpeg"
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
