"""DICOM bounded before pydicom reads it (issue 18, kind 2): a deflated data set is inflated through
a capped stream, an element declaring more than the file holds is refused by tag, and a normal
deflated DICOM still decodes. Bombs are built here, so a clean clone tests them without ../shared."""

from __future__ import annotations

import struct
import tracemalloc
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from fetalplanes.core.errors import ImageLoadError
from fetalplanes.core.io import load_image
from fetalplanes.core.limits import LIMITS


def dicom(syntax=ExplicitVRLittleEndian, padding: int = 0, private_blocks: int = 0, size: int = 64) -> bytes:
    """A 64x64 8-bit ultrasound DICOM; ``padding`` bytes of trailing padding (FFFC,FFFC);
    ``private_blocks`` private OB elements of 1 MiB each."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "US"
    gray = (np.arange(size * size) % 251).astype(np.uint8).reshape(size, size)
    ds.set_pixel_data(gray, "MONOCHROME2", 8)
    for i in range(private_blocks):
        ds.add_new((0x0009, 0x1000 + i), "OB", b"\0" * 2**20)
    if padding:
        ds.add_new((0xFFFC, 0xFFFC), "OB", b"\0" * padding)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_a_normal_deflated_dicom_decodes_like_its_explicit_twin() -> None:
    deflated, plain = dicom(DeflatedExplicitVRLittleEndian), dicom(ExplicitVRLittleEndian)
    assert np.array_equal(np.asarray(load_image(deflated)), np.asarray(load_image(plain)))


def test_pydicoms_own_deflated_example_decodes() -> None:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    path = get_testdata_file("image_dfl.dcm")
    assert dcmread(path).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert load_image(path).size == (512, 512)


def test_deflate_bomb_is_refused_by_tag_before_inflating_it() -> None:
    bomb = dicom(DeflatedExplicitVRLittleEndian, padding=LIMITS.dicom_element_bytes + 2**20)
    assert len(bomb) < 100_000  # tiny on the wire
    tracemalloc.start()
    try:
        with pytest.raises(ImageLoadError, match=r"bomb.dcm: DICOM element \(FFFC,FFFC\) declares 17,825,792 bytes"):
            load_image(bomb, name="bomb.dcm")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"{peak:,} bytes allocated while refusing"


def test_deflated_total_is_capped() -> None:
    # 20 elements of 1 MiB, each under the element cap; together over the cap of a 1000-pixel limit.
    blocks = dicom(DeflatedExplicitVRLittleEndian, private_blocks=20)
    with pytest.raises(ImageLoadError, match="inflates to more than"):
        load_image(blocks, name="blocks.dcm", max_pixels=1000)
    assert load_image(blocks).size == (64, 64)  # the default limit admits it


def test_element_longer_than_the_file_is_refused_by_tag() -> None:
    data = dicom() + struct.pack("<HH2s2xI", 0xFFFC, 0xFFFC, b"OB", 1_000_000) + b"\0" * 10
    with pytest.raises(ImageLoadError, match=r"cut.dcm: DICOM element \(FFFC,FFFC\) declares 1,000,000 bytes but "
                                             r"only 10 remain"):
        load_image(data, name="cut.dcm")


def test_shared_deflate_bomb_is_refused(shared_cases: Path) -> None:
    bomb = shared_cases / "dicom_deflate_bomb" / "deflate_bomb_1GiB.dcm"
    tracemalloc.start()
    try:
        with pytest.raises(ImageLoadError, match=r"deflate_bomb_1GiB.dcm: DICOM element \(FFFC,FFFC\)"):
            load_image(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20


def test_real_ultrasound_dicoms_still_load(shared_data: Path) -> None:
    files = sorted((shared_data / "dicom_us").glob("*.dcm")) + sorted((shared_data / "dicom_us").glob("*.DCM"))
    assert files
    for path in files:
        assert load_image(path).size[0] > 0
