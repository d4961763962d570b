"""The DICOM metadata gate before the network: is it ultrasound, and where is the B-mode image?

Two checks on the header of every DICOM file, before any frame reaches the classifier:

1. **Ultrasound or not** (PS3.3 C.7.3.1.1.1 Modality; PS3.4 B.5 SOP classes): a file is accepted
   when its SOP class is an ultrasound image storage class or a secondary-capture class (screen
   grabs of scanners) AND its Modality names no other modality (``US``, ``OT`` or absent). Both
   fields are checked: a CT Image Storage labelled ``US`` is refused like a CT. Anything else gets
   one line naming the field and the accepted values, e.g. ``not ultrasound (Modality CT, ...)``.
2. **Sequence of Ultrasound Regions** (0018,6011; PS3.3 C.8.5.5): when present, the frame is
   cropped to the tissue region, i.e. a region with Region Spatial Format 2D (0001) and Region
   Data Type TISSUE (0001). Waveform, spectral Doppler, M-mode, colour / grey bars and every other
   region are left out. Several tissue regions (dual or quad B-mode) are several images side by
   side: the largest one (the first on a tie) is classified, the others are named in the
   decision. When the sequence lists regions but none is tissue, the file is refused ("no B-mode
   tissue region"). Without the sequence the whole frame is used.

Region corners are inclusive pixel coordinates (x0, y0, x1, y1); a corner outside the frame is
clipped to it (scanners write x1 = Columns), and a region that is empty after clipping is ignored.
Torch-free; reads pydicom datasets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from fetalplanes.core.errors import GateRefusal, ImageLoadError

# PS3.4 B.5: ultrasound image storage (current and retired), and secondary capture.
US_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume Storage",
}
SECONDARY_CAPTURE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
}
# Modalities an ultrasound or secondary-capture SOP class may carry (absent, other, US): a screen
# grab is often OT, and an ultrasound class with an absent Modality is mislabelled, not another modality.
NEUTRAL_MODALITIES = ("", "OT", "US")
_EXPECTED = ("an ultrasound DICOM: SOP Class UID one of "
             + ", ".join(f"{name} ({uid})" for uid, name in {**US_SOP_CLASSES, **SECONDARY_CAPTURE_SOP_CLASSES}.items())
             + "; Modality US, OT or absent")
SPATIAL_2D = 1  # Region Spatial Format (0018,6012)
DATA_TISSUE = 1  # Region Data Type (0018,6014)
MAX_REGIONS = 64  # bound on an untrusted sequence

# Region Data Type (0018,6014), PS3.3 C.8.5.5.1.2, for the decision's wording.
REGION_DATA_TYPES = {
    0: "none", 1: "tissue", 2: "colour flow", 3: "PW spectral Doppler", 4: "CW spectral Doppler",
    5: "Doppler mean trace", 6: "Doppler mode trace", 7: "Doppler max trace", 8: "volume trace",
    10: "ECG trace", 11: "pulse trace", 12: "phonocardiogram trace", 13: "grey bar", 14: "colour bar",
    15: "integrated backscatter", 16: "area trace", 17: "d(area)/dt", 18: "other physiological input",
}


@dataclass(frozen=True)
class RegionDecision:
    """What the gate decided for one file: a crop box ``(left, top, right, bottom)`` (exclusive
    right/bottom, PIL's convention) or None for the whole frame, and a one-line reason."""

    box: tuple[int, int, int, int] | None
    reason: str
    left_out: list[str] = field(default_factory=list)

    def crop(self, image: Image.Image) -> Image.Image:
        return image if self.box is None else image.crop(self.box)


def check_ultrasound(ds: Any, label: str) -> None:
    """Raise ``ImageLoadError`` unless the SOP class AND the Modality both say ultrasound.

    Accepted: an ultrasound or secondary-capture SOP class (``US_SOP_CLASSES``,
    ``SECONDARY_CAPTURE_SOP_CLASSES``) whose Modality is ``US``, ``OT`` or absent
    (``NEUTRAL_MODALITIES``). Any other SOP class (CT Image Storage labelled ``US`` included) or a
    Modality naming another modality is refused in one line naming the field and the accepted
    values. A header without any SOP Class UID (neither the data set nor the file meta) is judged
    by its Modality alone. Source: PS3.4 B.5 (storage SOP classes), PS3.3 C.7.3.1.1.1 (Modality).
    """
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop = _sop_class(ds)
    if modality not in NEUTRAL_MODALITIES:
        raise GateRefusal(label, f"not ultrasound (Modality {modality}"
                             + (f", SOP class {_sop_name(sop)})" if sop else ")"), _EXPECTED)
    if not sop and modality == "US":
        return
    if sop in US_SOP_CLASSES or sop in SECONDARY_CAPTURE_SOP_CLASSES:
        return
    what = f"SOP Class UID {sop} ({_sop_name(sop)})" if sop else "no SOP Class UID"
    shown = f"Modality {modality}" if modality else "no Modality"
    raise GateRefusal(label, f"not ultrasound ({what}, {shown})", _EXPECTED)


def _sop_class(ds: Any) -> str:
    """The data set's SOP Class UID, else the file meta's Media Storage SOP Class UID, else ''."""
    sop = str(ds.get("SOPClassUID", "") or "").strip()
    if not sop:
        meta = getattr(ds, "file_meta", None)
        sop = str(meta.get("MediaStorageSOPClassUID", "") or "").strip() if meta is not None else ""
    return sop


def tissue_region(ds: Any, label: str, rows: int, cols: int) -> RegionDecision:
    """The crop decision from the Sequence of Ultrasound Regions (see module docstring)."""
    seq = ds.get("SequenceOfUltrasoundRegions")
    if not seq:
        return RegionDecision(None, "no Sequence of Ultrasound Regions: whole frame")
    if len(seq) > MAX_REGIONS:
        raise ImageLoadError(label, f"Sequence of Ultrasound Regions has {len(seq)} items",
                             f"at most {MAX_REGIONS} regions")
    tissue, other = [], []
    for n, item in enumerate(seq):
        box = _box(item, rows, cols)
        kind = _int(item.get("RegionDataType"))
        name = REGION_DATA_TYPES.get(kind, f"data type {kind}")
        if box is None:
            other.append(f"region {n} ({name}, empty or malformed corners)")
        elif _int(item.get("RegionSpatialFormat")) == SPATIAL_2D and kind == DATA_TISSUE:
            tissue.append((n, box))
        else:
            other.append(f"region {n} ({name})")
    if not tissue:
        raise GateRefusal(label, f"no B-mode tissue region in the Sequence of Ultrasound Regions "
                             f"({'; '.join(other)})", "a 2D tissue region (spatial format 1, data type 1)")
    area = [(b[2] - b[0]) * (b[3] - b[1]) for _, b in tissue]
    best = max(range(len(tissue)), key=lambda i: (area[i], -i))
    n, box = tissue[best]
    left_out = other + [f"region {m} (tissue, smaller or later)" for i, (m, _) in enumerate(tissue) if i != best]
    reason = f"tissue region {n} cropped to {box}" + (f"; left out: {', '.join(left_out)}" if left_out else "")
    return RegionDecision(box, reason, left_out)


def screen(ds: Any, label: str, rows: int, cols: int) -> RegionDecision:
    """Both checks: ``ImageLoadError`` for a non-ultrasound file or one without a tissue region,
    else the crop decision for its frames."""
    check_ultrasound(ds, label)
    return tissue_region(ds, label, rows, cols)


def _box(item: Any, rows: int, cols: int) -> tuple[int, int, int, int] | None:
    try:
        x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
        x1, y1 = int(item.RegionLocationMaxX1), int(item.RegionLocationMaxY1)
    except (AttributeError, TypeError, ValueError, OverflowError):
        return None
    left, top = max(0, x0), max(0, y0)
    right, bottom = min(cols, x1 + 1), min(rows, y1 + 1)  # inclusive corners -> PIL's exclusive box
    if right - left < 2 or bottom - top < 2:
        return None
    return left, top, right, bottom


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _sop_name(uid: str) -> str:
    try:
        from pydicom.uid import UID

        name = UID(uid).name
        return name if name and name != uid else uid
    except Exception:  # an invalid UID string
        return uid
