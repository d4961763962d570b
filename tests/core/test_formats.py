"""Format detection by content in a fixed order (DICM at byte 128 first), and core's import graph."""

from __future__ import annotations

import ast
import struct
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fetalplanes.core.formats import codestream_size, sniff_format, sniff_video
from fetalplanes.core.io import load_image

CORE = Path(__file__).resolve().parents[2] / "src" / "fetalplanes" / "core"


def _dicom(arr: np.ndarray, photometric: str = "MONOCHROME2") -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.6.1", generate_uid()
    ds.set_pixel_data(arr, photometric, 8)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("preamble", [b"II*\x00", b"MM\x00*", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a"])
def test_dicm_marker_decides_before_any_image_magic(preamble: bytes) -> None:
    arr = np.arange(48, dtype=np.uint8).reshape(6, 8)
    data = bytearray(_dicom(arr))
    data[: len(preamble)] = preamble  # the preamble may hold anything (PS3.10 7.1)
    assert sniff_format(bytes(data)) == "dicom"
    assert np.array_equal(np.asarray(load_image(bytes(data))), arr)


def test_shared_tiff_preamble_case_reads_as_dicom(shared_cases: Path) -> None:
    path = shared_cases / "dicom_preamble" / "c19_tiff_preamble.dcm"
    assert path.read_bytes()[:4] == b"II*\x00"
    image = load_image(path)
    assert sniff_format(path.read_bytes()) == "dicom" and image.size == (351, 259)
    assert np.asarray(image).max() > 0


def test_files_and_bytes_detect_alike(tmp_path: Path) -> None:
    buf = BytesIO()
    Image.new("L", (4, 3), 7).save(buf, "PNG")
    path = tmp_path / "scan.dcm"  # a misleading suffix: content decides
    path.write_bytes(buf.getvalue())
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(load_image(buf.getvalue())))


@pytest.mark.parametrize(
    ("head", "expected"),
    [(b"RIFF\x00\x00\x00\x00AVI LIST", "avi"), (b"\x00\x00\x00\x18ftypisom", "mp4"),
     (b"\x1a\x45\xdf\xa3\x01\x00", "matroska"), (b"\x00\x00\x01\xba\x44", "mpeg"), (b"\x89PNG\r\n\x1a\n", None)],
)
def test_sniff_video(head: bytes, expected: str | None) -> None:
    assert sniff_video(head) == expected


def test_codestream_size_reads_jpeg_sof_and_j2k_siz() -> None:
    buf = BytesIO()
    Image.new("L", (37, 21)).save(buf, "JPEG")
    assert codestream_size(buf.getvalue()) == (37, 21)
    siz = b"\xff\x4f\xff\x51" + struct.pack(">HHIIII", 47, 0, 640, 480, 0, 0)
    assert codestream_size(siz + b"\x00" * 40) == (640, 480)
    assert codestream_size(b"\x00\x01\x02") is None


def _core_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }


def test_no_import_circle_between_io_and_dicom() -> None:
    """io -> dicom -> {errors, formats, intensity}; nothing below io imports io back (issue 10 item 5)."""
    for low in ("dicom", "errors", "formats", "intensity"):
        assert "fetalplanes.core.io" not in _core_imports(CORE / f"{low}.py"), low
    assert "fetalplanes.core.dicom" in _core_imports(CORE / "io.py")


# ------------------------------------------------------------------ the one format table


def test_every_reader_derives_from_the_one_table() -> None:
    from fetalplanes.core import errors, formats, frames, io
    from fetalplanes.serve import service

    accepted = formats.accepted_images()
    assert errors.EXPECTED == formats.EXPECTED_TEXT  # written out below formats; must say the same
    assert [f.label for f in accepted if f.name != "dicom"] == [
        label for label in formats.EXPECTED_TEXT[2:].replace(" or DICOM image", "").split(", ")]
    assert io.IMAGE_SUFFIXES == frozenset(s for f in accepted for s in f.suffixes)
    assert frames.VIDEO_SUFFIXES == tuple(s for f in formats.FORMATS if f.frames == "video" for s in f.suffixes)
    assert service.ACCEPTED_FORMATS == tuple(f.name for f in accepted)
    assert {"gif", "webp", "avif"} <= set(service.ACCEPTED_FORMATS) and "heic" not in service.ACCEPTED_FORMATS


def _ftyp(*brands: bytes) -> bytes:
    body = brands[0] + b"\x00\x00\x00\x00" + b"".join(brands[1:])
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\x00" * 40


@pytest.mark.parametrize(
    ("head", "image", "video"),
    [(_ftyp(b"avif", b"avif", b"mif1", b"miaf"), "avif", None),
     (_ftyp(b"mif1", b"avif", b"miaf"), "avif", None),  # AVIF by a compatible brand
     (_ftyp(b"heic", b"mif1", b"heic"), "heic", None),
     (_ftyp(b"isom", b"isom", b"iso2", b"mp41"), None, "mp4"),
     (_ftyp(b"qt  ", b"qt  "), None, "mp4")],
)
def test_iso_media_stills_are_not_videos(head: bytes, image: str | None, video: str | None) -> None:
    assert (sniff_format(head), sniff_video(head)) == (image, video)


def test_heic_is_refused_in_one_line_naming_the_accepted_formats(tmp_path: Path) -> None:
    from fetalplanes.core.errors import EXPECTED, ImageLoadError
    from fetalplanes.core.frames import open_frames

    path = tmp_path / "photo.heic"
    path.write_bytes(_ftyp(b"heic", b"mif1", b"heic"))
    for read in (load_image, open_frames):
        with pytest.raises(ImageLoadError) as info:
            read(path)
        message = str(info.value)
        assert message.startswith(f"{path}: a HEIC/HEIF image") and EXPECTED in message and "video" not in message


def test_avif_still_decodes_like_its_png_twin(shared_cases: Path) -> None:
    pytest.importorskip("PIL.AvifImagePlugin")
    avif, png = shared_cases / "avif_heic_still" / "femur.avif", shared_cases / "avif_heic_still" / "femur.png"
    a, b = load_image(avif), load_image(png)
    assert (a.mode, a.size) == (b.mode, b.size)
    # AVIF is lossy: within a few grey levels of the lossless twin.
    assert np.abs(np.asarray(a, int) - np.asarray(b, int)).max() <= 12
