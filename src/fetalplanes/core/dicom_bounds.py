"""DICOM data sets bounded before pydicom reads them: declared element lengths and capped inflation.

pydicom trusts what a file declares: it inflates a Deflated Explicit VR Little Endian data set
(PS3.5 A.5) in one ``zlib.decompress`` call, so 1 MB can become 1 GiB in memory, and it reads an
element whose declared length runs past the end of the file as if the bytes were there.
:func:`bounded_dicom` walks the data elements' headers (PS3.5 section 7: tag, VR, length;
sequences, items and encapsulated fragments of undefined length) before pydicom sees the bytes:

- a deflated data set is inflated chunk by chunk through a capped stream: no element but the pixel
  data may declare more than ``LIMITS.dicom_element_bytes``, and the whole data set may not exceed
  :meth:`~fetalplanes.core.limits.Limits.inflated_bytes` (one frame at the pixel limit as 16-bit
  RGB plus header room); the walk refuses at the header that declares too much, so a trailing
  1 GiB padding element is refused after inflating only the bytes before it. The result is handed
  to pydicom as Explicit VR Little Endian (what the deflated data set is, PS3.5 A.5);
- an element other than the pixel data whose declared length exceeds the bytes that remain is a
  one-line error naming the tag (a short pixel data element stays a short read, reported by frame).

Every refusal is an :class:`~fetalplanes.core.errors.ImageLoadError` naming the file and the tag.
Torch-free: the standard library only.
"""

from __future__ import annotations

import struct
import zlib

from fetalplanes.core.errors import ImageLoadError
from fetalplanes.core.limits import LIMITS

__all__ = ["DEFLATED", "bounded_dicom"]

DEFLATED = b"1.2.840.10008.1.2.1.99"
_EXPLICIT_LE = b"1.2.840.10008.1.2.1\x00"
_IMPLICIT_LE = b"1.2.840.10008.1.2"
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_PIXEL_TAGS = frozenset({(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)})
_ENCAPSULATED = (b"1.2.840.10008.1.2.4.", b"1.2.840.10008.1.2.5")  # JPEG family, RLE: explicit VR LE
_UNDEFINED = 0xFFFFFFFF
_IN_CHUNK, _OUT_STEP = 64 * 1024, 1 << 20


class _Walk:
    """Incremental walk over data element headers; ``advance`` as more bytes arrive."""

    def __init__(self, label: str, implicit: bool, caps: tuple[int, int] | None) -> None:
        self.label, self.caps, self.pos = label, caps, 0
        self.modes = ["implicit" if implicit else "explicit"]
        self.lost = False  # a header this walk cannot read: pydicom decides (no false refusal)
        self.last: tuple[int, int, int] | None = None  # (group, element, length) of the last element

    def advance(self, buf: bytes | bytearray | memoryview) -> None:
        while not self.lost and self.pos + 8 <= len(buf):
            if not self._step(buf):
                return

    def _step(self, buf: bytes | bytearray | memoryview) -> bool:
        pos, mode = self.pos, self.modes[-1]
        group, element = struct.unpack_from("<HH", buf, pos)
        if group == 0xFFFE:  # item, item delimiter, sequence delimiter: no VR, 4-byte length
            length = struct.unpack_from("<I", buf, pos + 4)[0]
            if element == 0xE0DD and len(self.modes) > 1:
                self.modes.pop()
            if element == 0xE000 and mode == "fragments" and length != _UNDEFINED:
                self._check(group, element, length, pixel=True)
                self.pos = pos + 8 + length
            else:
                self.pos = pos + 8
            return True
        if mode == "implicit":
            vr, length, header = b"", struct.unpack_from("<I", buf, pos + 4)[0], 8
        else:
            vr = bytes(buf[pos + 4:pos + 6])
            if not (vr.isalpha() and vr.isupper()):
                self.lost = True
                return False
            if vr in _LONG_VRS:
                if pos + 12 > len(buf):
                    return False
                length, header = struct.unpack_from("<I", buf, pos + 8)[0], 12
            else:
                length, header = struct.unpack_from("<H", buf, pos + 6)[0], 8
        if length == _UNDEFINED:  # walk into the sequence / fragments until its delimiter
            pixel = (group, element) in _PIXEL_TAGS
            self.modes.append("fragments" if pixel else "implicit" if vr == b"UN" else mode)
            self.pos = pos + header
            return True
        self._check(group, element, length, pixel=(group, element) in _PIXEL_TAGS)
        self.last = (group, element, length)
        self.pos = pos + header + length
        return True

    def _check(self, group: int, element: int, length: int, pixel: bool) -> None:
        if self.caps is None:
            return
        cap = self.caps[1] if pixel else self.caps[0]
        if length > cap:
            what = "pixel data" if pixel else "an element other than the pixel data"
            raise ImageLoadError(self.label, f"DICOM element ({group:04X},{element:04X}) declares {length:,} bytes",
                                 f"at most {cap:,} bytes for {what}")

    def finish(self, size: int) -> None:
        """The data set ended at ``size`` bytes: an element running past it is refused by tag."""
        if self.lost or self.pos <= size or self.last is None:
            return
        group, element, length = self.last
        if (group, element) in _PIXEL_TAGS:
            return  # a short pixel data element: the frame reader reports the frames present
        remain = max(0, size - (self.pos - length))
        raise ImageLoadError(self.label, f"DICOM element ({group:04X},{element:04X}) declares {length:,} bytes but "
                             f"only {remain:,} remain in the file", "element lengths within the file (a complete file)")


def _file_meta(data: bytes) -> tuple[int, bytes | None]:
    """(offset where the data set starts, transfer syntax UID) of a Part 10 file (explicit VR LE meta)."""
    pos, syntax = 132, None
    while pos + 8 <= len(data) and struct.unpack_from("<H", data, pos)[0] == 0x0002:
        element, vr = struct.unpack_from("<H", data, pos + 2)[0], data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            length, header = struct.unpack_from("<I", data, pos + 8)[0], 12
        else:
            length, header = struct.unpack_from("<H", data, pos + 6)[0], 8
        if element == 0x0010:
            syntax = data[pos + header:pos + header + length].rstrip(b"\x00 ")
        pos += header + length
    return pos, syntax


def _meta_as_explicit(meta: bytes) -> bytes:
    """The file meta group with (0002,0010) set to Explicit VR Little Endian and the group length fixed."""
    out, pos = bytearray(), 132
    while pos < len(meta):
        element, vr = struct.unpack_from("<H", meta, pos + 2)[0], meta[pos + 4:pos + 6]
        long = vr in _LONG_VRS
        length = struct.unpack_from("<I" if long else "<H", meta, pos + (8 if long else 6))[0]
        header = 12 if long else 8
        if element == 0x0010:
            out += struct.pack("<HH2sH", 0x0002, 0x0010, b"UI", len(_EXPLICIT_LE)) + _EXPLICIT_LE
        elif element != 0x0000:
            out += meta[pos:pos + header + length]
        pos += header + length
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(out))
    return meta[:132] + group_length + bytes(out)


def _inflate(deflated: bytes, label: str, max_pixels: int) -> bytes:
    total = LIMITS.inflated_bytes(max_pixels)
    walk = _Walk(label, implicit=False, caps=(LIMITS.dicom_element_bytes, total))
    inflater, out = zlib.decompressobj(-zlib.MAX_WBITS), bytearray()
    try:
        for start in range(0, len(deflated), _IN_CHUNK):
            pending = deflated[start:start + _IN_CHUNK]
            while pending and not inflater.eof:  # bytes after the end of the stream (even-length padding) are ignored
                out += inflater.decompress(pending, _OUT_STEP)
                pending = inflater.unconsumed_tail
                if len(out) > total:
                    raise ImageLoadError(label, f"the deflated DICOM data set inflates to more than {total:,} bytes",
                                         f"at most {total:,} bytes (one frame at the pixel limit)")
                walk.advance(out)
            if inflater.eof:
                break
        out += inflater.flush()
    except zlib.error as exc:
        raise ImageLoadError(label, f"corrupt deflated DICOM data set (zlib: {exc})") from None
    walk.advance(out)
    walk.finish(len(out))
    return bytes(out)


def bounded_dicom(data: bytes, label: str, max_pixels: int) -> bytes:
    """The bytes pydicom should read: ``data`` itself once its element lengths are checked, or, for a
    deflated data set, the file meta plus the data set inflated through the capped stream (as
    Explicit VR Little Endian). Raises :class:`ImageLoadError` naming the file and the tag."""
    if data[128:132] != b"DICM":
        return data  # a preamble-less data set (old exports): no meta to tell the encoding; pydicom decides
    start, syntax = _file_meta(data)
    if syntax == DEFLATED:
        return _meta_as_explicit(data[:start]) + _inflate(data[start:], label, max_pixels)
    known = syntax in (_IMPLICIT_LE, _EXPLICIT_LE.rstrip(b"\x00")) or (syntax or b"").startswith(_ENCAPSULATED)
    if known:  # big endian and private syntaxes are left to pydicom
        walk = _Walk(label, syntax == _IMPLICIT_LE, caps=None)
        walk.advance(memoryview(data)[start:])
        walk.finish(len(data) - start)
    return data
