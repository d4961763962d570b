"""The one intensity rule (core/intensity.py): twins give identical pixels, so identical probabilities.

8-bit vs 16-bit x257 (PNG, TIFF, DICOM), DICOM vs PNG of one frame, the four palette encodings,
YBR vs RGB; brightness is never stretched per image.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fetalplanes.core.io import load_image
from fetalplanes.core.preprocess import preprocess, to_gray
from fetalplanes.core.spec import Preprocessing

PRE = Preprocessing(image_size=32)
FRAME = (np.add.outer(np.arange(24) * 7, np.arange(32) * 3) % 200).astype(np.uint8)  # values 0..199


def encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def dicom(arr: np.ndarray, photometric: str = "MONOCHROME2", bits: int | None = None, **attrs) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.6.1", generate_uid()
    ds.set_pixel_data(arr, photometric, bits or arr.dtype.itemsize * 8)
    for key, value in attrs.items():
        setattr(ds, key, value)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def gray(source) -> np.ndarray:
    return np.asarray(to_gray(load_image(source)))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_8bit_and_16bit_x257_twins_are_identical(fmt: str) -> None:
    eight, sixteen = encode(FRAME, fmt), encode(FRAME.astype(np.uint16) * 257, fmt)
    assert load_image(sixteen).mode == "I;16"  # full precision kept until to_gray
    assert np.array_equal(gray(eight), gray(sixteen))
    assert np.array_equal(preprocess(load_image(eight), PRE), preprocess(load_image(sixteen), PRE))


def test_darker_16bit_image_stays_darker() -> None:
    dark = (FRAME // 2).astype(np.uint16) * 257
    assert np.array_equal(gray(encode(dark, "PNG")), FRAME // 2)  # not stretched back to full range
    raw = gray(encode(FRAME.astype(np.uint16), "PNG"))  # 8-bit values in a 16-bit file: as stored, dark
    assert raw.max() <= 1


def test_dicom_and_png_of_one_frame_are_identical() -> None:
    png = gray(encode(FRAME, "PNG"))
    assert np.array_equal(gray(dicom(FRAME)), png)
    assert np.array_equal(gray(dicom(FRAME.astype(np.uint16) * 257)), png)  # 16 bits stored, no window


def test_dicom_monochrome1_and_rescale() -> None:
    assert np.array_equal(gray(dicom(FRAME, "MONOCHROME1")), 255 - FRAME)
    # Rescale (the modality LUT) is applied and the range comes from BitsStored through it.
    out = gray(dicom(FRAME, RescaleSlope=2, RescaleIntercept=-10))
    assert np.array_equal(out, FRAME)


def test_ybr_full_is_converted_to_rgb() -> None:
    from pydicom.pixels import convert_color_space

    rgb = np.stack([FRAME, 255 - FRAME, FRAME // 2], axis=-1)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    got = np.asarray(load_image(dicom(ybr, "YBR_FULL"))).astype(int)
    assert np.abs(got - rgb).max() <= 2


def _palette(entries: np.ndarray, bits: int, vr: str = "OW") -> bytes:
    """PALETTE COLOR DICOM of FRAME with the same gray-ramp LUT for R, G and B."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.6.1", generate_uid()
    ds.set_pixel_data(FRAME, "MONOCHROME2", 8)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    for colour in ("Red", "Green", "Blue"):
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [256, 0, bits])
        ds.add_new(f"{colour}PaletteColorLookupTableData", vr, entries.tobytes())
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_palette_encodings_decode_alike() -> None:
    ramp = np.arange(256)
    reference = gray(_palette((ramp * 257).astype("<u2"), 16))
    assert np.array_equal(reference, FRAME)
    assert np.array_equal(gray(_palette(ramp.astype("<u2"), 16)), reference)  # 8-bit values declared 16-bit
    assert np.array_equal(gray(_palette(ramp.astype("<u2"), 8)), reference)  # 8-bit values in 16-bit words
    assert np.array_equal(gray(_palette(ramp.astype(np.uint8), 8)), reference)  # 8-bit bytes


def test_shared_palette_cases_equal_the_16bit_reference(shared_cases: Path) -> None:
    folder = shared_cases / "dicom_palette"
    reference = np.asarray(load_image(folder / "c04_pal16_ok.dcm"))
    assert reference.max() == 255  # a grey image, not black
    for path in sorted(folder.glob("*.dcm")):
        assert np.array_equal(np.asarray(load_image(path)), reference), path.name


def test_shared_bit_depth_twins(shared_cases: Path) -> None:
    folder = shared_cases / "bit_depth"
    for eight, sixteen in [("c09_8bit", "c09_16bit_x257"), ("c09_dark_8bit", "c09_dark_16bit_x257")]:
        a, b = load_image(folder / f"{eight}.png"), load_image(folder / f"{sixteen}.png")
        assert np.array_equal(preprocess(a, PRE), preprocess(b, PRE)), sixteen
    normal, dark = gray(folder / "c09_8bit.png"), gray(folder / "c09_dark_16bit_x257.png")
    assert dark.mean() < 0.8 * normal.mean()  # a darker scan stays darker
    flip8, flip16 = gray(folder / "c09_flip_8bit.png"), gray(folder / "c09_flip_16bit.png")
    assert np.abs(flip8.astype(int) - flip16.astype(int)).max() <= 1  # same brightness rule
