"""DICOM decoding, one frame at a time, bounded and with one error type.

:class:`DicomFrames` reads a Part 10 file (or a preamble-less dataset) and decodes each
frame on request, so a cine loop with one corrupt frame still gives the others, and
memory holds one decoded frame at a time. Before a frame is decoded:

- Rows x Columns is checked against the pixel limit, and for compressed transfer syntaxes
  so is the frame's own JPEG / JPEG-LS / JPEG 2000 codestream header
  (:func:`fetalplanes.core.formats.codestream_size`); a codestream whose size differs from
  Rows/Columns is refused, never decoded (a 64x64 header cannot smuggle a 12000x12000 frame);
- a JPEG-family codestream must end with its EOI/EOC marker (FFD9) before the DICOM
  padding (00 or FF), so a frame truncated or zeroed in transit is reported instead of decoded to a
  silent black image by a lenient decoder.

Declared (NumberOfFrames) and present frame counts are compared; a short read is noted in
:attr:`DicomFrames.short_read`. JPEG baseline/extended and JPEG 2000 prefer Pillow, which
raises on damaged data; JPEG Lossless, JPEG-LS and RLE use the ``[dicom]`` extra (pylibjpeg).
Stored values become 8-bit by :class:`fetalplanes.core.intensity.DicomIntensity`.
Every failure is an :class:`~fetalplanes.core.errors.ImageLoadError` naming the file and
frame. Torch-free; pydicom is imported on first use.
"""

from __future__ import annotations

import warnings
from io import BytesIO
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fetalplanes.core.dicom_bounds import bounded_dicom
from fetalplanes.core.errors import ImageLoadError
from fetalplanes.core.formats import DEFAULT_MAX_PIXELS, check_size, codestream_size
from fetalplanes.core.intensity import DicomIntensity
from fetalplanes.core.limits import PixelBudget
from fetalplanes.core.us_regions import RegionDecision, screen

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["DICOM_EXTRA_HINT", "DicomFrames", "dicom_frames", "read_dataset"]

DICOM_EXTRA_HINT = "pip install 'fetalplanes[dicom]' (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle)"

# Transfer syntaxes whose frames are JPEG-family codestreams ending with FFD9 (EOI / J2K EOC).
_JPEG_FAMILY = ("1.2.840.10008.1.2.4.",)
_PREFERRED_PLUGIN = "pillow"  # raises on damaged JPEG/J2K data where pylibjpeg may return zeros


def read_dataset(data: bytes, label: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Dataset:
    """Parse DICOM bytes; ImageLoadError for junk, for files without pixel data, and for declared
    lengths beyond the file or (deflated data sets) beyond the limits (:mod:`fetalplanes.core.dicom_bounds`)."""
    # Imported lazily: pydicom is only needed for DICOM and costs import time at startup.
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    has_preamble = data[128:132] == b"DICM"
    data = bounded_dicom(data, label, max_pixels)  # before pydicom allocates anything the file declares
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about many harmless deviations
            ds = pydicom.dcmread(BytesIO(data), force=not has_preamble)
    # pydicom raises InvalidDicomError, EOFError, struct.error, ValueError... on junk.
    except Exception as exc:
        raise ImageLoadError(label, f"corrupt DICOM file ({type(exc).__name__}: {exc})") from None
    if len(ds) == 0:
        raise ImageLoadError(label, "corrupt DICOM file (no data elements could be read)")
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        reason = "DICOM file has no pixel data (a report, DICOMDIR or presentation state?)"
        raise ImageLoadError(label, reason)
    if "TransferSyntaxUID" not in ds.file_meta:
        # A headerless file has no file meta; pydicom needs the transfer syntax to decode,
        # and the encoding it detected while parsing is the right one.
        implicit, little = ds.original_encoding
        explicit = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else explicit
    return ds


class DicomFrames:
    """The frames of one DICOM file; ``frame(i)`` decodes frame ``i`` to an 8-bit PIL image.

    ``declared`` is NumberOfFrames (1 when absent); ``len(self)`` the frames actually present
    in the pixel data; ``short_read`` says why they differ (None when they do not).
    Raises :class:`ImageLoadError` for a file-level fault (geometry, no decoder, LUTs).
    """

    def __init__(self, data: bytes, label: str, max_pixels: int, budget: PixelBudget | None = None,
                 gate: bool = True) -> None:
        self.budget = budget
        # ``gate``: the ultrasound / tissue-region check of ``core.us_regions`` (off only to score
        # the network alone, e.g. in benchmarks/bench_ood.py).
        self.gate = gate
        with warnings.catch_warnings():
            # pydicom warns (to stderr) about every deviation it meets; faults that matter
            # become an ImageLoadError instead.
            warnings.simplefilter("ignore")
            try:
                self._setup(data, label, max_pixels)
            except ImageLoadError:
                raise
            # pydicom parses elements lazily, so a damaged element (unknown VR, missing
            # attribute, bad value) surfaces on first use, with any exception type.
            except Exception as exc:
                reason = f"invalid DICOM image attributes ({type(exc).__name__}: {_one_line(exc)})"
                raise ImageLoadError(label, reason) from None

    def _setup(self, data: bytes, label: str, max_pixels: int) -> None:
        self.label, self.max_pixels = label, max_pixels
        self.ds = ds = read_dataset(data, label, max_pixels)
        self.rows, self.cols, self.declared = _geometry(ds, label, max_pixels)
        self.region = screen(ds, label, self.rows, self.cols) if self.gate else RegionDecision(None, "gate off")
        self.uid = ds.file_meta.TransferSyntaxUID
        self.decoder = _decoder(self.uid, label)
        self.short_read: str | None = None
        self._codestreams: list[bytes] | None = None
        self._options = _pixel_options(ds)
        self.intensity = DicomIntensity(ds, label)
        self.count = self._encapsulated_count() if self.uid.is_encapsulated else self._native_count()

    def __len__(self) -> int:
        return self.count

    # ----------------------------------------------------------------- frame counts
    def _encapsulated_count(self) -> int:
        from pydicom.encaps import generate_frames

        frames: list[bytes] = []
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for codestream in generate_frames(self.ds.PixelData, number_of_frames=self.declared):
                    frames.append(codestream)
        except Exception as exc:  # damaged item tags or offset table: keep what was read
            self.short_read = f"encapsulated pixel data ends early ({type(exc).__name__}: {exc})"
        self._codestreams = frames[: self.declared]
        if len(frames) < self.declared and self.short_read is None:
            self.short_read = "the pixel data holds fewer frames than NumberOfFrames"
        if not frames:
            raise ImageLoadError(self.label, f"no frame found in the pixel data ({self.short_read})")
        return len(self._codestreams)

    def _native_count(self) -> int:
        from pydicom.pixels.utils import get_expected_length

        expected = get_expected_length(self.ds, unit="bytes")
        per_frame = max(1, expected // self.declared)
        pixels = next(self.ds[k].value for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in self.ds)
        present = len(pixels) // per_frame
        if present < self.declared:
            self.short_read = f"pixel data is {len(pixels):,} bytes, {expected:,} expected"
            if present == 0:
                raise ImageLoadError(self.label, f"cannot decode DICOM pixel data: {self.short_read}")
            self.ds.NumberOfFrames = present  # so pydicom decodes the frames that are there
        return min(present, self.declared)

    # ----------------------------------------------------------------- decoding
    def frame(self, index: int) -> Image.Image:
        """Frame ``index`` (0-based) as 'L' or 'RGB'; ImageLoadError naming the file and frame."""
        if self.budget is not None:  # Rows x Columns, checked against the codestream in _decode
            self.budget.charge(self.cols, self.rows, self.label, self._where(index))
        raw = self._decode(index)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return self.region.crop(Image.fromarray(np.ascontiguousarray(self.intensity(raw, index))))
        except ImageLoadError as err:  # the intensity rule's own refusal (e.g. floats outside 0..1)
            raise err.with_frame(index) if self._where(index) is not None else err from None
        except Exception as exc:  # LUT/window attributes that pydicom's helpers cannot apply
            reason = f"invalid DICOM LUT or window attributes ({type(exc).__name__}: {_one_line(exc)})"
            raise ImageLoadError(self.label, reason, frame=self._where(index)) from None

    def _decode(self, index: int) -> np.ndarray:
        label = self.label
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if self._codestreams is None:
                    from pydicom.pixels import pixel_array

                    return pixel_array(self.ds, index=index)
                return self._decode_codestream(index)
        except ImageLoadError:
            raise
        except Exception as exc:  # decoder plugins raise assorted types on damaged data
            reason = f"cannot decode DICOM pixel data, {self.uid.name} ({type(exc).__name__}: {_one_line(exc)})"
            raise ImageLoadError(label, reason, frame=self._where(index)) from None

    def _where(self, index: int) -> int | None:
        """The frame index for messages; None for a single-frame file (the file says it all)."""
        return index if self.declared > 1 else None

    def _decode_codestream(self, index: int) -> np.ndarray:
        from pydicom.encaps import encapsulate

        assert self._codestreams is not None
        codestream = self._codestreams[index]
        self._check_codestream(codestream, index)
        plugin = _PREFERRED_PLUGIN if _PREFERRED_PLUGIN in self.decoder.available_plugins else ""
        options = {**self._options, "number_of_frames": 1}
        arr, _ = self.decoder.as_array(encapsulate([codestream]), index=0, decoding_plugin=plugin, **options)
        return arr

    def _check_codestream(self, codestream: bytes, index: int) -> None:
        size, index = codestream_size(codestream), self._where(index)
        if size is not None:
            check_size(*size, self.label, self.max_pixels, index)
            if size != (self.cols, self.rows):
                reason = (f"the frame's codestream declares {size[0]}x{size[1]} pixels but the DICOM header "
                          f"says {self.cols}x{self.rows} (Columns x Rows)")
                raise ImageLoadError(self.label, reason, "a codestream matching Rows/Columns", index)
        if str(self.uid).startswith(_JPEG_FAMILY) and not codestream.rstrip(b"\x00\xff").endswith(b"\xff\xd9"):
            reason = "truncated or damaged JPEG codestream (no end-of-image marker)"
            raise ImageLoadError(self.label, reason, "a complete codestream ending with FFD9", index)


def dicom_frames(data: bytes, label: str, max_pixels: int, first_only: bool,
                 budget: PixelBudget | None = None) -> list[Image.Image]:
    """All frames (or the first) of a DICOM file; any bad frame raises (see :mod:`fetalplanes.core.frames`
    for the per-frame robust iterator)."""
    frames = DicomFrames(data, label, max_pixels, budget)
    if frames.short_read and not first_only:
        raise ImageLoadError(label, f"{frames.short_read}: {len(frames)} of {frames.declared} frame(s) present")
    return [frames.frame(i) for i in range(1 if first_only else len(frames))]


def _geometry(ds: Dataset, label: str, max_pixels: int) -> tuple[int, int, int]:
    """(rows, cols, NumberOfFrames) checked against max_pixels and the pixel module's rules
    (PS3.3 C.7.6.3) before anything is decoded."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        count = int(ds.get("NumberOfFrames", 1) or 1)
        allocated, stored = int(ds.BitsAllocated), int(ds.get("BitsStored") or ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:
        raise ImageLoadError(label, f"DICOM image geometry is missing or invalid ({_one_line(exc)})") from None
    check_size(cols, rows, label, max_pixels)
    if count < 1:
        raise ImageLoadError(label, f"DICOM NumberOfFrames is {count}", "NumberOfFrames >= 1")
    if allocated not in (1, 8, 16, 32) or not 1 <= stored <= allocated or samples not in (1, 3):
        reason = f"DICOM BitsAllocated {allocated}, BitsStored {stored}, SamplesPerPixel {samples} are inconsistent"
        raise ImageLoadError(label, reason, "BitsAllocated 1/8/16/32, 1 <= BitsStored <= BitsAllocated, 1 or 3 samples")
    return rows, cols, count


def _decoder(uid, label: str):  # noqa: ANN001, ANN202 - pydicom types, imported lazily
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        reason = f"DICOM transfer syntax {uid.name} ({uid}) is not supported by pydicom"
        raise ImageLoadError(label, reason) from None
    if not decoder.is_available:
        options = "; ".join(decoder.missing_dependencies) or "no plugin"
        reason = (f"DICOM transfer syntax {uid.name} ({uid}) needs a decoder that is not installed: "
                  f"{DICOM_EXTRA_HINT} [{options}]")
        raise ImageLoadError(label, reason)
    return decoder


def _pixel_options(ds: Dataset) -> dict:
    from pydicom.pixels import as_pixel_options

    return as_pixel_options(ds)


def _one_line(exc: BaseException) -> str:
    """Third-party messages can span lines (pydicom lists every plugin's failure): keep one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines)[:300] if lines else type(exc).__name__
