"""DICOM decoding for the one image loader (:mod:`fetalplanes.core.io`): pixel data -> 8-bit frames.

Handles the transfer syntaxes pydicom can decode (JPEG-LS and JPEG 2000 need the pylibjpeg
extras), single frames and cine loops, MONOCHROME1/2 with the modality LUT then the VOI LUT
or window, palette and RGB/YBR colour. Every failure is an :class:`ImageLoadError` that
names the file. Torch-free; pydicom is imported on first use.
"""

from __future__ import annotations

import warnings
from io import BytesIO
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fetalplanes.core.io import ImageLoadError, _check_size, _finite_range, _scale_to_uint8

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

_DICOM_PLUGIN_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)"


def dicom_frames(data: bytes, label: str, max_pixels: int, first_only: bool) -> list[Image.Image]:
    ds = _read_dicom(data, label)
    count = _dicom_geometry(ds, label, max_pixels)
    pixels = _decode_dicom(ds, label, index=0 if first_only else None)
    frames = pixels[None] if first_only or count == 1 else pixels
    palette = ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    colour = palette or int(ds.get("SamplesPerPixel", 1) or 1) > 1
    try:
        arrays = _dicom_colour(frames, ds) if colour else _dicom_gray(frames, ds)
    # pydicom's LUT helpers raise these on inconsistent or missing LUT/window attributes.
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, NotImplementedError) as exc:
        reason = f"invalid DICOM LUT/window attributes ({type(exc).__name__}: {exc})"
        raise ImageLoadError(label, reason) from None
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]


def _read_dicom(data: bytes, label: str) -> Dataset:
    # Imported lazily: pydicom is only needed for DICOM and costs import time at startup.
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    has_preamble = data[128:132] == b"DICM"
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


def _dicom_geometry(ds: Dataset, label: str, max_pixels: int) -> int:
    """Check Rows/Columns against max_pixels before decoding; return the number of frames."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        count = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageLoadError(label, f"DICOM image geometry is missing or invalid ({exc})") from None
    _check_size(cols, rows, label, max_pixels)
    if count < 1:
        raise ImageLoadError(label, f"DICOM NumberOfFrames is {count}")
    return count


def _decode_dicom(ds: Dataset, label: str, index: int | None) -> np.ndarray:
    from pydicom.pixels import get_decoder, pixel_array

    uid = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        reason = f"DICOM transfer syntax {uid.name} ({uid}) is not supported by pydicom"
        raise ImageLoadError(label, reason) from None
    if not decoder.is_available:
        options = "; ".join(decoder.missing_dependencies) or "no plugin"
        reason = (
            f"DICOM transfer syntax {uid.name} ({uid}) needs a decoder that is not installed: "
            f"{_DICOM_PLUGIN_HINT} [{options}]"
        )
        raise ImageLoadError(label, reason)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pixel_array(ds, index=index)
    except Exception as exc:  # decoder plugins raise assorted types on damaged data
        reason = f"cannot decode DICOM pixel data, {uid.name} ({type(exc).__name__}: {exc})"
        raise ImageLoadError(label, reason) from None


def _dicom_gray(frames: np.ndarray, ds: Dataset) -> list[np.ndarray]:
    """Grayscale frames -> 8-bit: modality LUT, then VOI (window or LUT), then MONOCHROME1 inversion."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    lo, hi = _gray_range(frames, ds)
    out = [_scale_to_uint8(apply_voi_lut(apply_modality_lut(f, ds), ds), lo, hi) for f in frames]
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        out = [255 - frame for frame in out]  # MONOCHROME1: the lowest value is white
    return out


def _gray_range(frames: np.ndarray, ds: Dataset) -> tuple[float, float]:
    """Input range that maps to 0..255, shared by all frames so a cine does not flicker."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    probe = _voi_probe(ds)
    if probe is not None:
        # The VOI output range is what the window/LUT maps its whole domain to, so the
        # window's intent is kept even when the image does not fill it.
        with np.errstate(over="ignore"):
            limits = apply_voi_lut(probe, ds)
        return float(np.min(limits)), float(np.max(limits))
    if frames.dtype == np.uint8:
        # 8-bit data without a window is shown as stored: stretching it would change the
        # contrast the scanner chose and differ from the same image exported as PNG.
        limits = apply_modality_lut(np.array([0, 255]), ds)
        return float(np.min(limits)), float(np.max(limits))
    lows, highs = zip(*(_finite_range(np.asarray(apply_modality_lut(f, ds))) for f in frames))
    return min(lows), max(highs)


def _voi_probe(ds: Dataset) -> np.ndarray | None:
    """Inputs spanning the domain of the VOI transform pydicom will apply, or None without one."""
    # Same precedence as apply_voi_lut(prefer_lut=True): a complete VOI LUT beats a window.
    lut = ds.get("VOILUTSequence")
    if lut and lut[0].get("LUTDescriptor") is not None and lut[0].get("LUTData") is not None:
        entries, first = int(lut[0].LUTDescriptor[0]) or 65536, int(lut[0].LUTDescriptor[1])
        return np.arange(first - 1, first + entries + 1)
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return np.array([-1e300, 1e300])  # a window clamps anything outside it to its limits
    return None


def _dicom_colour(frames: np.ndarray, ds: Dataset) -> list[np.ndarray]:
    """Colour frames (pydicom already converted YBR to RGB) or palette frames -> 8-bit RGB."""
    from pydicom.pixels import apply_color_lut

    palette = ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    out = []
    for frame in frames:
        if palette:
            frame = apply_color_lut(frame, ds)
            top = 255 if frame.dtype == np.uint8 else 65535  # 8- or 16-bit LUT entries
        else:
            top = 2 ** int(ds.get("BitsStored", 8)) - 1
        keep = frame.dtype == np.uint8 and top == 255
        out.append(frame if keep else _scale_to_uint8(frame, 0.0, float(top)))
    return out
