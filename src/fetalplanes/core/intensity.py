"""The one intensity rule: how stored sample values become the 8-bit gray levels a model sees.

Every source goes through the functions here (images via :mod:`fetalplanes.core.io` and
:func:`fetalplanes.core.preprocess.to_gray`, DICOM via :mod:`fetalplanes.core.dicom`), so
the same frame gives the same pixels whatever file it came in. The rule:

- **8-bit data is used as stored.** No stretching, no histogram tricks.
- **16-bit (and 32-bit integer) PNG/TIFF is scaled by its bit depth**: v -> round(v * 255 /
  (2**bits - 1)), i.e. v / 257 for 16 bits. Never by the image's own min/max: a darker
  scan must stay darker, and the 8-bit and 16-bit (x257) exports of one frame must give
  identical pixels (tests/core/test_intensity.py). Floating-point images must lie in 0..1.
- **DICOM grayscale** (PS3.3 C.11): the Modality LUT (or Rescale Slope/Intercept), then the
  VOI LUT or Window Center/Width when present; the output range of that VOI transform maps
  to 0..255. Without a VOI transform the range is the one BitsStored allows (through the
  Modality LUT), again never the image's own min/max. MONOCHROME1 is inverted (its lowest
  value is white). pydicom's ``apply_modality_lut`` and ``apply_voi_lut`` do the work.
  In an Enhanced (multi-frame) object the window and rescale of a frame come from its
  per-frame functional group, then the shared one, then the top level (PS3.3 C.7.6.16:
  Frame VOI LUT and Pixel Value Transformation macros), as a viewer applies them.
- **DICOM Float / Double Float Pixel Data** (PS3.3 C.7.6.24): the window, when one is given,
  as above; without one the floating-point rule (values in 0..1 -> 0..255; anything else is
  refused with a one-line reason, as there is no defined gray range).
- **DICOM PALETTE COLOR** (PS3.3 C.7.6.3.1.5): through the palette (pydicom
  ``apply_color_lut``), scaled by the LUT descriptor's bits per entry (8 -> 255, 16 ->
  65535), unless a 16-bit descriptor's whole LUT never exceeds 255: such writers store
  8-bit values in 16-bit entries, and the LUT's real range (255) is the scale.
- **DICOM RGB / YBR**: YBR_FULL, YBR_FULL_422 (and the JPEG 2000 YBR_RCT/ICT) are converted
  to RGB during decoding (pydicom ``pixel_array(..., as_rgb=True)``, which calls
  ``convert_color_space``; planar configuration is undone by the decoder), then scaled by
  BitsStored.

Colour images stay colour here; the model's gray view is made by ``preprocess.to_gray``.
Torch-free; pydicom is imported only for DICOM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fetalplanes.core.errors import ImageLoadError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["DicomIntensity", "scale_by_bits", "scale_float", "scale_to_uint8"]


def scale_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of [lo, hi] to [0, 255], rounded and clipped; a flat range gives black."""
    if not hi > lo:
        return np.zeros(np.shape(values), dtype=np.uint8)
    x = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=lo, posinf=hi, neginf=lo)
    return np.rint((np.clip(x, lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def scale_by_bits(values: np.ndarray, bits: int, signed: bool = False) -> np.ndarray:
    """Integer samples of ``bits`` bits -> uint8 by the bit depth (8-bit data unchanged)."""
    values = np.asarray(values)
    if bits == 8 and not signed and values.dtype == np.uint8:
        return values
    lo = -(2 ** (bits - 1)) if signed else 0
    return scale_to_uint8(values, float(lo), float(lo + 2**bits - 1))


def scale_float(values: np.ndarray, label: str) -> np.ndarray:
    """Floating-point samples in 0..1 -> uint8; anything else has no defined display range."""
    finite = np.asarray(values)[np.isfinite(values)]
    if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
        reason = f"floating-point image with values {finite.min():g}..{finite.max():g} has no defined gray range"
        raise ImageLoadError(label, reason, "8- or 16-bit integer samples, or floating-point samples in 0..1")
    return scale_to_uint8(values, 0.0, 1.0)


class DicomIntensity:
    """The rule for one DICOM dataset, prepared once and applied to each of its frames.

    ``DicomIntensity(ds)(frame)`` takes a decoded frame (rows, cols) or (rows, cols, 3) as
    pydicom returns it and gives uint8 (rows, cols) gray or (rows, cols, 3) RGB. The ranges
    are fixed per dataset, so a cine loop does not flicker from frame to frame.
    """

    def __init__(self, ds: Dataset, label: str = "DICOM") -> None:
        self.ds, self.label = ds, label
        self.photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        self.bits_stored = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
        self.signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        self._gray: dict[tuple, tuple[Dataset, bool, tuple[float, float]]] = {}
        if self.photometric == "PALETTE COLOR":
            self.top = _palette_top(ds)
        elif int(ds.get("SamplesPerPixel", 1) or 1) > 1:
            self.top = float(2**self.bits_stored - 1)
        else:
            self._gray_rule(0)  # an unusable window or LUT fails here, once, not per frame

    def __call__(self, frame: np.ndarray, index: int = 0) -> np.ndarray:
        """Frame ``index`` (0-based; it selects the frame's functional groups) as uint8."""
        from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

        if self.photometric == "PALETTE COLOR":
            rgb = apply_color_lut(frame, self.ds)
            return rgb if rgb.dtype == np.uint8 and self.top == 255 else scale_to_uint8(rgb, 0.0, self.top)
        if frame.ndim == 3:
            return frame if frame.dtype == np.uint8 and self.top == 255 else scale_to_uint8(frame, 0.0, self.top)
        view, has_voi, limits = self._gray_rule(index)
        if frame.dtype.kind == "f" and not has_voi:
            gray = scale_float(frame, self.label)  # Float Pixel Data without a window: the 0..1 rule
        else:
            values = frame if frame.dtype.kind == "f" else apply_modality_lut(frame, view)
            if has_voi:
                values = apply_voi_lut(values, view)
            gray = scale_to_uint8(values, *limits)
        return 255 - gray if self.photometric == "MONOCHROME1" else gray  # MONOCHROME1: lowest value is white

    def _gray_rule(self, index: int) -> tuple[Dataset, bool, tuple[float, float]]:
        """(attributes that apply to frame ``index``, whether a VOI transform applies, its output
        range), cached per distinct window/rescale so a cine's ranges are computed once."""
        view = frame_attributes(self.ds, index)
        key = tuple(str(view.get(name, "")) for name in _FUNCTIONAL_KEYS)
        if key not in self._gray:
            self._gray[key] = (view, _voi_probe(view) is not None, _gray_range(view, self.bits_stored, self.signed))
        return self._gray[key]


# Functional group macro -> the attributes it replaces at the top level (PS3.3 C.7.6.16.2.10, .2.9).
_FUNCTIONAL = {
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
}
_FUNCTIONAL_KEYS = tuple(name for names in _FUNCTIONAL.values() for name in names)


def frame_attributes(ds: Dataset, index: int) -> Dataset:
    """``ds`` itself, or, in an Enhanced object, a copy of its pixel-value attributes with the
    window and rescale of frame ``index``: from its per-frame functional group, else the shared
    functional group, else the top level (PS3.3 C.7.6.16). Nothing else (no pixel data) is copied."""
    from pydicom.dataset import Dataset

    per_frame, shared = ds.get("PerFrameFunctionalGroupsSequence"), ds.get("SharedFunctionalGroupsSequence")
    groups = ([per_frame[index]] if per_frame and 0 <= index < len(per_frame) else []) + ([shared[0]] if shared else [])
    found = []
    for macro, names in _FUNCTIONAL.items():
        item = next((g[macro][0] for g in groups if g.get(macro)), None)
        found += [item[name] for name in names if item is not None and name in item]
    if not found:
        return ds
    # The frame's own window takes precedence over a top-level VOI LUT, which is then not copied.
    sequences = {"ModalityLUTSequence"} | ({"VOILUTSequence"} if "WindowCenter" not in {e.keyword for e in found} else set())
    view = Dataset()
    for element in ds:  # the Image Pixel / Modality LUT / VOI LUT attributes (group 0028)
        if element.tag.group == 0x0028 and (element.VR != "SQ" or element.keyword in sequences):
            view.add(element)
    for element in found:
        view.add(element)
    return view


def _palette_top(ds: Dataset) -> float:
    """Full-scale value of the palette output: the descriptor's bits, or 255 for 8-bit values in 16-bit entries."""
    from pydicom.pixels import apply_color_lut

    descriptor = ds.RedPaletteColorLookupTableDescriptor
    entries, first, bits = int(descriptor[0]) or 65536, int(descriptor[1]), int(descriptor[2])
    top = float(2 ** min(max(bits, 1), 16) - 1)
    if bits > 8:
        whole = apply_color_lut(np.arange(first, first + entries, dtype=np.int64).clip(0, 65535).astype(np.uint16), ds)
        if int(whole.max()) <= 255:
            top = 255.0  # 8-bit values stored in 16-bit entries: the LUT's real range
    return top


def _gray_range(ds: Dataset, bits: int, signed: bool) -> tuple[float, float]:
    """Input range of the final linear map to 0..255 (see module doc)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    probe = _voi_probe(ds)
    if probe is not None:
        # The VOI output range is what the window/LUT maps its whole domain to, so the
        # window's intent is kept even when the image does not fill it.
        with np.errstate(over="ignore"):
            limits = apply_voi_lut(probe, ds)
        return float(np.min(limits)), float(np.max(limits))
    lo = -(2 ** (bits - 1)) if signed else 0
    hi = lo + 2**bits - 1
    stored = np.arange(lo, hi + 1) if bits <= 16 else np.array([lo, hi])
    limits = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    return float(np.min(limits)), float(np.max(limits))


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
