"""The DICOM metadata gate (core.us_regions): non-ultrasound files are refused in one line, and the
Sequence of Ultrasound Regions crops each frame to its B-mode tissue region. Every real ultrasound
DICOM in ../shared/data/dicom_us gets a pinned decision."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fetalplanes.core.dicom import DicomFrames
from fetalplanes.core.errors import ImageLoadError
from fetalplanes.core.io import load_image

REPO = Path(__file__).resolve().parents[2]
DICOM_US = REPO.parent / "shared" / "data" / "dicom_us"
LIMIT = 10**8

# file -> (crop box (left, top, right, bottom) or None for the whole frame, decoded size, words in the reason)
DECISIONS = {
    "JPGLosslessP14SV1_1s_1f_8b.dcm": ((14, 38, 1011, 759), (997, 721), "tissue region 0"),
    "OBXXXX1A.dcm": ((120, 60, 800, 519), (680, 459), "left out: region 1 (ECG trace)"),
    "OBXXXX1A_2frame.dcm": ((120, 60, 800, 519), (680, 459), "left out: region 1 (ECG trace)"),
    "OBXXXX1A_rle.dcm": ((120, 60, 800, 519), (680, 459), "left out: region 1 (ECG trace)"),
    "gdcm-US-ALOKA-16.dcm": ((32, 24, 336, 416), (304, 392), "region 2 (grey bar), region 1 (tissue"),
    "US1_UNCR.dcm": (None, (640, 480), "no Sequence of Ultrasound Regions"),
    "US1_J2KR.dcm": (None, (640, 480), "no Sequence of Ultrasound Regions"),
    "color-pl.dcm": (None, (256, 120), "no Sequence of Ultrasound Regions"),
    "dbdicom_0020.DCM": (None, (600, 430), "no Sequence of Ultrasound Regions"),
}


@pytest.mark.parametrize("name", sorted(DECISIONS))
def test_real_ultrasound_dicoms_get_their_documented_decision(name: str) -> None:
    path = DICOM_US / name
    if not path.is_file():
        pytest.skip("../shared/data/dicom_us is not present")
    box, size, words = DECISIONS[name]
    frames = DicomFrames(path.read_bytes(), name, LIMIT)
    assert frames.region.box == box
    assert words in frames.region.reason
    assert frames.frame(0).size == size
    assert load_image(path).size == size  # the one loader crops too
    whole = DicomFrames(path.read_bytes(), name, LIMIT, gate=False).frame(0)
    assert whole.size == (frames.cols, frames.rows)


def _dataset(modality: str | None, sop: str, regions: list[dict] | None = None) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop, ds.SOPInstanceUID
    if modality is not None:
        ds.Modality = modality
    arr = (np.arange(40 * 60) % 251).astype(np.uint8).reshape(40, 60)
    ds.set_pixel_data(arr, "MONOCHROME2", 8)
    if regions is not None:
        items = []
        for r in regions:
            item = Dataset()
            for key, value in r.items():
                setattr(item, key, value)
            items.append(item)
        ds.SequenceOfUltrasoundRegions = items
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


US, CT, SC = "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.7"


def _region(x0: int, y0: int, x1: int, y1: int, kind: int, fmt: int = 1) -> dict:
    return {"RegionSpatialFormat": fmt, "RegionDataType": kind, "RegionLocationMinX0": x0,
            "RegionLocationMinY0": y0, "RegionLocationMaxX1": x1, "RegionLocationMaxY1": y1}


@pytest.mark.parametrize("modality,sop,ok", [
    ("US", US, True), (None, US, True), ("OT", US, True), ("OT", SC, True), (None, SC, True), ("US", SC, True),
    ("CT", CT, False), ("CT", SC, False), ("MR", "1.2.840.10008.5.1.4.1.1.4", False), (None, CT, False),
    ("US", CT, False), ("CT", US, False), ("US", "1.2.840.10008.5.1.4.1.1.4", False),
])
def test_modality_gate(modality: str | None, sop: str, ok: bool) -> None:
    data = _dataset(modality, sop)
    if ok:
        assert load_image(data, name="x.dcm").size == (60, 40)
        return
    with pytest.raises(ImageLoadError) as err:
        load_image(data, name="x.dcm")
    assert str(err.value).startswith("x.dcm: not ultrasound (")
    assert "\n" not in str(err.value)
    if modality:
        assert f"Modality {modality}" in str(err.value)


def test_ct_sop_class_labelled_us_is_refused_naming_the_field_and_the_accepted_classes() -> None:
    with pytest.raises(ImageLoadError) as err:
        load_image(_dataset("US", CT), name="ct_as_us.dcm")
    text = str(err.value)
    assert text.startswith("ct_as_us.dcm: not ultrasound (SOP Class UID 1.2.840.10008.5.1.4.1.1.2 (CT Image Storage), Modality US)")
    assert "Ultrasound Image Storage (1.2.840.10008.5.1.4.1.1.6.1)" in text and "Modality US, OT or absent" in text
    assert "\n" not in text


def test_pydicom_ct_and_mr_examples_are_refused() -> None:
    examples = pytest.importorskip("pydicom.examples")
    for ds, modality in ((examples.ct, "CT"), (examples.mr, "MR")):
        with pytest.raises(ImageLoadError, match=f"not ultrasound \\(Modality {modality}"):
            load_image(Path(ds.filename))


def test_tissue_region_is_cropped_and_doppler_spectrum_left_out() -> None:
    data = _dataset("US", US, [_region(30, 0, 59, 39, kind=3, fmt=3), _region(2, 3, 21, 30, kind=1)])
    image = load_image(data, name="x.dcm")
    assert image.size == (20, 28)
    ref = (np.arange(40 * 60) % 251).astype(np.uint8).reshape(40, 60)[3:31, 2:22]
    np.testing.assert_array_equal(np.asarray(image), ref)


def test_regions_without_tissue_are_refused_in_one_line() -> None:
    data = _dataset("US", US, [_region(0, 0, 59, 39, kind=3, fmt=3), _region(0, 0, 5, 39, kind=13, fmt=0)])
    with pytest.raises(ImageLoadError, match=r"x.dcm: no B-mode tissue region .*PW spectral Doppler.*grey bar"):
        load_image(data, name="x.dcm")


def test_corners_outside_the_frame_are_clipped_and_empty_regions_ignored() -> None:
    data = _dataset("US", US, [_region(50, 50, 90, 90, kind=1), _region(0, 10, 1000, 1000, kind=1)])
    assert load_image(data, name="x.dcm").size == (60, 30)
