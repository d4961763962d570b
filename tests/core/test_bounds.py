"""Every decode is bounded: the pixel limit is checked on each frame's own codestream header."""

from __future__ import annotations

import json
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fetalplanes.core.io import ImageLoadError, load_image

SRC = Path(__file__).resolve().parents[2] / "src"


def jpeg(width: int, height: int) -> bytes:
    buf = BytesIO()
    Image.new("L", (width, height), 90).save(buf, "JPEG", quality=50)
    return buf.getvalue()


def dicom_with_frame(codestream: bytes, rows: int = 64, cols: int = 64) -> bytes:
    """A JPEG Baseline DICOM whose header says rows x cols, carrying ``codestream`` as its frame."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.6.1", generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_matching_codestream_decodes() -> None:
    assert np.asarray(load_image(dicom_with_frame(jpeg(64, 64)))).mean() == pytest.approx(90, abs=2)


def test_codestream_larger_than_the_limit_is_refused_before_decoding() -> None:
    with pytest.raises(ImageLoadError, match=r"bomb\.dcm: image is 3000x2000 .*max_pixels"):
        load_image(dicom_with_frame(jpeg(3000, 2000)), name="bomb.dcm", max_pixels=1_000_000)


def test_codestream_not_matching_rows_columns_is_refused() -> None:
    with pytest.raises(ImageLoadError, match=r"declares 80x72 pixels but the DICOM header says 64x64"):
        load_image(dicom_with_frame(jpeg(80, 72)))


def test_truncated_codestream_is_reported_not_decoded_to_black() -> None:
    stream = jpeg(64, 64)
    with pytest.raises(ImageLoadError, match=r"cut\.dcm: truncated or damaged JPEG codestream"):
        load_image(dicom_with_frame(stream[: len(stream) // 2] + b"\x00" * 64), name="cut.dcm")


MEASURE = """
import json, resource, sys
from fetalplanes.core.io import ImageLoadError, load_image
import pydicom.pixels, pydicom.encaps  # imports cost memory too: load them before measuring
path = sys.argv[1]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_image(path)
    message = None
except ImageLoadError as err:
    message = str(err)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"message": message, "grew_mb": (after - before) / 1024}))
"""


def test_shared_bomb_is_refused_and_memory_stays_flat(shared_cases: Path) -> None:
    """12000x12000 JPEG in a 64x64 DICOM: decoding it would take ~144 MB (597 MB peak measured before)."""
    path = shared_cases / "dicom_bomb" / "c21_small_header_big_jpeg.dcm"
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True,
                          timeout=120, env=env, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["message"] and path.name in result["message"] and "12000x12000" in result["message"]
    assert "\n" not in result["message"]
    assert result["grew_mb"] < 40, result
