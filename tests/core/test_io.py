"""Tests for fetalplanes.core.io: every supported format round-trips, every failure is an
ImageLoadError naming the file. All data is tiny and made in tmp_path."""

from __future__ import annotations

import logging
import pickle
import struct
import subprocess
import sys
import warnings
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, generate_uid

from fetalplanes.core.io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    BadFilesError,
    ImageLoadError,
    check_files,
    is_image_file,
    list_images,
    load_frames,
    load_image,
    sniff_format,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"


# --------------------------------------------------------------------------- builders


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def gray8(h: int = 6, w: int = 8) -> np.ndarray:
    return (np.arange(h * w, dtype=np.uint32).reshape(h, w) * 5 % 256).astype(np.uint8)


def rgb8(h: int = 6, w: int = 8, channels: int = 3) -> np.ndarray:
    return (np.arange(h * w * channels, dtype=np.uint32).reshape(h, w, channels) * 7 % 256).astype(np.uint8)


def smooth(channels: int = 0, h: int = 16, w: int = 16) -> np.ndarray:
    """A gentle gradient: JPEG reproduces it closely, unlike the wrapping patterns above."""
    ramp = np.add.outer(np.arange(h) * 4, np.arange(w) * 6).astype(np.uint8)
    return ramp if not channels else np.stack([ramp, 255 - ramp, ramp // 2], axis=-1)


def noisy_png(size: int = 64) -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    return encode(Image.fromarray(noise), "PNG")


def patch_png_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite the IHDR width/height and its CRC, leaving the tiny pixel stream as is."""
    data = bytearray(png)
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def dicom_dataset(
    arr: np.ndarray | None, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **attrs
) -> Dataset:
    """A minimal ultrasound dataset; pydicom's set_pixel_data fills in the pixel module."""
    multi = arr is not None and arr.ndim == 3 and photometric.startswith("MONO")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = US_MULTIFRAME_STORAGE if multi else US_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "US"
    if arr is not None:
        ds.set_pixel_data(arr, photometric, bits_stored or arr.dtype.itemsize * 8)
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def dicom_bytes(
    arr: np.ndarray | None, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **attrs
) -> bytes:
    buf = BytesIO()
    dicom_dataset(arr, photometric, bits_stored, **attrs).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write(tmp_path: Path, filename: str, data: bytes) -> Path:
    path = tmp_path / filename
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- round trips

ARR16 = (np.arange(6 * 8, dtype=np.uint32).reshape(6, 8) * 1301 % 65536).astype(np.uint16)


def palette_image(transparent: bool = False) -> Image.Image:
    image = Image.fromarray(np.array([[0, 1, 2, 3]] * 3, dtype=np.uint8), mode="P")
    image.putpalette([10, 20, 30, 200, 0, 0, 0, 200, 0, 0, 0, 200] + [0] * 756)
    if transparent:
        image.info["transparency"] = 0
    return image


PALETTE_RGB = np.array([[[10, 20, 30], [200, 0, 0], [0, 200, 0], [0, 0, 200]]] * 3, dtype=np.uint8)

ROUND_TRIPS = {
    # id: (encoded bytes, expected mode, expected array or None, max abs error)
    "png-gray8": (encode(Image.fromarray(gray8()), "PNG"), "L", gray8(), 0),
    "png-16bit": (encode(Image.fromarray(ARR16), "PNG"), "I;16", ARR16, 0),
    "png-rgb": (encode(Image.fromarray(rgb8()), "PNG"), "RGB", rgb8(), 0),
    "png-rgba": (encode(Image.fromarray(rgb8(channels=4)), "PNG"), "RGBA", rgb8(channels=4), 0),
    "png-palette": (encode(palette_image(), "PNG"), "RGB", PALETTE_RGB, 0),
    "png-palette-transparent": (encode(palette_image(True), "PNG"), "RGBA", None, 0),
    "jpeg-gray": (encode(Image.fromarray(smooth()), "JPEG", quality=95), "L", smooth(), 8),
    "jpeg-rgb": (encode(Image.fromarray(smooth(3)), "JPEG", quality=95), "RGB", smooth(3), 8),
    "bmp-gray": (encode(Image.fromarray(gray8()), "BMP"), "L", gray8(), 0),
    "bmp-rgb": (encode(Image.fromarray(rgb8()), "BMP"), "RGB", rgb8(), 0),
    "tiff-gray": (encode(Image.fromarray(gray8()), "TIFF"), "L", gray8(), 0),
    "tiff-16bit": (encode(Image.fromarray(ARR16), "TIFF"), "I;16", ARR16, 0),
    "tiff-16bit-bigendian": (encode(Image.fromarray(ARR16.astype(">u2")), "TIFF"), "I;16", ARR16, 0),
    "gif": (encode(palette_image(), "GIF"), "RGB", PALETTE_RGB, 0),
    "webp-lossless": (encode(Image.fromarray(rgb8()), "WEBP", lossless=True), "RGB", rgb8(), 0),
}


@pytest.mark.parametrize("key", list(ROUND_TRIPS))
def test_round_trip(tmp_path: Path, key: str) -> None:
    data, mode, expected, tolerance = ROUND_TRIPS[key]
    path = write(tmp_path, f"img-{key}.bin", data)  # suffix deliberately uninformative
    image = load_image(path)
    assert image.mode == mode
    assert image.im is not None  # fully decoded, not lazy
    if expected is not None:
        got = np.asarray(image)
        assert got.shape == expected.shape
        assert np.abs(got.astype(np.int64) - expected.astype(np.int64)).max() <= tolerance
    from_bytes = load_image(data)
    assert from_bytes.mode == mode and from_bytes.size == image.size


def test_palette_with_transparency_keeps_alpha() -> None:
    image = load_image(ROUND_TRIPS["png-palette-transparent"][0])
    arr = np.asarray(image)
    assert arr[0, 0, 3] == 0 and arr[0, 1, 3] == 255
    assert tuple(arr[0, 1, :3]) == (200, 0, 0)


def test_str_path_and_pathlike_give_same_pixels(tmp_path: Path) -> None:
    path = write(tmp_path, "gray.png", encode(Image.fromarray(gray8()), "PNG"))
    assert np.array_equal(np.asarray(load_image(str(path))), np.asarray(load_image(path)))


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(Image.new("RGB", (30, 20), (90, 90, 90)), "JPEG", exif=exif)
    assert load_image(data).size == (20, 30)


def test_gif_frames() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (8, 6), c) for c in colours]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    loaded = load_frames(data)
    assert len(loaded) == 3
    for image, colour in zip(loaded, colours):
        assert image.mode in ("RGB", "RGBA") and image.size == (8, 6)
        assert image.convert("RGB").getpixel((3, 3)) == colour
    assert load_image(data).convert("RGB").getpixel((0, 0)) == colours[0]


def test_multipage_tiff_frames() -> None:
    pages = [Image.fromarray(np.full((5, 7), v, dtype=np.uint8)) for v in (10, 20)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    loaded = load_frames(data)
    assert [np.asarray(p)[0, 0] for p in loaded] == [10, 20]
    assert np.asarray(load_image(data))[0, 0] == 10


def test_single_image_load_frames_is_one_element_list() -> None:
    frames = load_frames(encode(Image.fromarray(gray8()), "PNG"))
    assert len(frames) == 1 and frames[0].mode == "L"


# --------------------------------------------------------------------------- DICOM


def test_dicom_monochrome2_8bit(tmp_path: Path) -> None:
    path = write(tmp_path, "us.dcm", dicom_bytes(gray8()))
    image = load_image(path)
    assert image.mode == "L"
    assert np.array_equal(np.asarray(image), gray8())  # 8-bit data is not contrast-stretched


def test_dicom_monochrome1_is_inverted() -> None:
    image = load_image(dicom_bytes(gray8(), "MONOCHROME1"))
    assert image.mode == "L"
    assert np.array_equal(np.asarray(image), 255 - gray8())


def test_dicom_16bit_window_applied() -> None:
    arr = np.array([[0, 1000, 2000, 3000, 4095]], dtype=np.uint16)
    image = load_image(dicom_bytes(arr, bits_stored=12, WindowCenter=2000, WindowWidth=2000))
    got = np.asarray(image).astype(int)[0]
    assert image.mode == "L"
    assert got[0] == 0 and got[1] == 0  # below the window
    assert got[3] == 255 and got[4] == 255  # above the window
    assert abs(got[2] - 128) <= 1  # the centre maps to mid-gray


def test_dicom_voi_lut_takes_precedence_over_window() -> None:
    arr = np.array([[0, 1000, 2000, 3000, 4095]], dtype=np.uint16)
    ds = dicom_dataset(arr, bits_stored=12, WindowCenter=100, WindowWidth=10)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", [x // 32 for x in range(4096)])  # LUTData, output 0..127
    ds.VOILUTSequence = Sequence([item])
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    got = np.asarray(load_image(buf.getvalue()))[0].tolist()
    assert got == [0, 62, 124, 187, 255]  # the LUT's output range, not the window's, maps to 0..255


def test_dicom_16bit_without_window_scales_by_bits_stored() -> None:
    arr = np.array([[500, 1000, 1500, 4095]], dtype=np.uint16)
    got = np.asarray(load_image(dicom_bytes(arr, bits_stored=12)))[0]
    assert got.tolist() == [31, 62, 93, 255]  # v * 255 / 4095, never the image's own min/max


def test_dicom_rgb() -> None:
    image = load_image(dicom_bytes(rgb8(), "RGB"))
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), rgb8())


def test_dicom_multiframe(tmp_path: Path) -> None:
    arr = np.stack([gray8(4, 5) + 10 * i for i in range(3)]).astype(np.uint8)
    path = write(tmp_path, "cine.dcm", dicom_bytes(arr))
    assert pydicom.dcmread(path).NumberOfFrames == 3
    frames = load_frames(path)
    assert len(frames) == 3
    for i, frame in enumerate(frames):
        assert frame.mode == "L" and frame.size == (5, 4)
        assert np.array_equal(np.asarray(frame), arr[i])
    first = load_image(path)
    assert first.size == (5, 4) and np.array_equal(np.asarray(first), arr[0])


def test_dicom_without_preamble() -> None:
    ds = dicom_dataset(gray8())
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)  # file meta, but no preamble/DICM
    assert buf.getvalue()[128:132] != b"DICM"
    assert sniff_format(buf.getvalue()) == "dicom"
    assert np.array_equal(np.asarray(load_image(buf.getvalue())), gray8())

    del ds.file_meta  # a bare implicit-VR dataset, as some old exports write
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    assert np.array_equal(np.asarray(load_image(buf.getvalue())), gray8())


# --------------------------------------------------------------------------- errors


def _dicom_missing_decoder() -> bytes:
    ds = dicom_dataset(None, Rows=4, Columns=4, SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2",
                       BitsAllocated=8, BitsStored=8, HighBit=7, PixelRepresentation=0)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    ds["PixelData"].VR = "OB"
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dicom_zero_rows() -> bytes:
    ds = dicom_dataset(None, Rows=0, Columns=4, SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2",
                       BitsAllocated=8, BitsStored=8, HighBit=7, PixelRepresentation=0)
    ds.PixelData = b""
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dicom_truncated_pixels() -> bytes:
    ds = dicom_dataset(gray8(8, 8))
    ds.PixelData = ds.PixelData[:10]
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


ERROR_CASES = {
    # id: (bytes to write, or None for "do not create", text expected in the message)
    "missing": (None, "not found"),
    "empty": (b"", "empty"),
    "text": (b"Image_name;Plane\nPatient001_Plane1_1_of_15;Fetal brain\n", "text"),
    "random": (np.random.default_rng(1).bytes(2000), "not an image"),
    "truncated-png": (noisy_png()[: len(noisy_png()) // 2], "PNG"),
    "bomb-png": (patch_png_size(encode(Image.new("L", (4, 4)), "PNG"), 30000, 30000), "pixels"),
    "bomb-warning-png": (patch_png_size(encode(Image.new("L", (4, 4)), "PNG"), 10000, 9000), "pixels"),
    "zero-width-png": (patch_png_size(encode(Image.new("L", (4, 4)), "PNG"), 0, 4), "PNG"),
    "dicom-no-pixels": (dicom_bytes(None, StudyDescription="report"), "no pixel data"),
    "dicom-zero-rows": (_dicom_zero_rows(), "zero size"),
    "dicom-truncated-pixels": (_dicom_truncated_pixels(), "decode"),
    "dicom-junk-after-preamble": (b"\x00" * 128 + b"DICM" + b"\xff" * 7, "DICOM"),
}


@pytest.mark.parametrize("key", list(ERROR_CASES))
def test_errors_name_the_file(tmp_path: Path, key: str) -> None:
    data, fragment = ERROR_CASES[key]
    path = tmp_path / f"case-{key}.png"
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message and "expected" in message
    assert fragment.lower() in message.lower()
    if data:  # the same bytes given directly use the given name
        with pytest.raises(ImageLoadError, match="upload-42"):
            load_image(data, name="upload-42")


def test_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="directory") as info:
        load_image(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_bytes_default_name() -> None:
    with pytest.raises(ImageLoadError, match="<bytes>"):
        load_image(b"not an image at all")


def test_max_pixels_is_checked_before_decoding(tmp_path: Path) -> None:
    path = write(tmp_path, "small.png", encode(Image.fromarray(gray8(8, 8)), "PNG"))
    with pytest.raises(ImageLoadError, match="max_pixels") as info:
        load_image(path, max_pixels=63)
    assert "small.png" in str(info.value)
    assert load_image(path, max_pixels=64).size == (8, 8)
    with pytest.raises(ImageLoadError, match="cine.dcm"):
        load_frames(dicom_bytes(np.zeros((3, 8, 8), np.uint8)), name="cine.dcm", max_pixels=63)


def test_max_bytes(tmp_path: Path) -> None:
    data = encode(Image.fromarray(gray8()), "PNG")
    path = write(tmp_path, "big.png", data)
    with pytest.raises(ImageLoadError, match=r"big\.png.*at most 10 bytes"):
        load_image(path, max_bytes=10)
    with pytest.raises(ImageLoadError, match="at most 10 bytes"):
        load_image(data, max_bytes=10)
    assert load_image(path, max_bytes=len(data)).mode == "L"


def test_bomb_guard_changes_no_global_state() -> None:
    filters_before = list(warnings.filters)
    limit_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageLoadError):
        load_image(ERROR_CASES["bomb-warning-png"][0])
    assert Image.MAX_IMAGE_PIXELS == limit_before
    assert warnings.filters == filters_before


def test_missing_dicom_decoder_names_transfer_syntax_and_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.pixels.decoders.base import Decoder

    # Pretend the [dicom] extra is absent, whether or not it is installed here.
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    monkeypatch.setattr(Decoder, "missing_dependencies", property(lambda self: ["pylibjpeg: requires pylibjpeg"]))
    with pytest.raises(ImageLoadError) as info:
        load_image(_dicom_missing_decoder(), name="lossless.dcm")
    message = str(info.value)
    assert "lossless.dcm" in message and JPEGLosslessSV1 in message
    assert "JPEG Lossless" in message and "fetalplanes[dicom]" in message and "\n" not in message


def test_errors_pickle_round_trip() -> None:
    original = ImageLoadError("a.png", "empty file (0 bytes)")
    err = pickle.loads(pickle.dumps(original))
    assert (err.name, err.reason, str(err)) == ("a.png", "empty file (0 bytes)", str(original))
    assert str(pickle.loads(pickle.dumps(ImageLoadError("b.png: preformatted")))) == "b.png: preformatted"
    bad = pickle.loads(pickle.dumps(BadFilesError([("a.png", "x"), ("b.png", "y")])))
    assert bad.bad == [("a.png", "x"), ("b.png", "y")]


def test_type_error_for_unsupported_source() -> None:
    with pytest.raises(TypeError):
        load_image(12345)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- sniffing and folders


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "png"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 20, "jpeg"),
        (b"BM" + b"\x00" * 12 + struct.pack("<I", 40) + b"\x00" * 20, "bmp"),
        (b"BMW is a car, not a bitmap header....", None),
        (b"II*\x00" + b"\x00" * 20, "tiff"),
        (b"MM\x00*" + b"\x00" * 20, "tiff"),
        (b"GIF89a" + b"\x00" * 20, "gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (b"\x00" * 128 + b"DICM" + b"\x00" * 8, "dicom"),
        (b"hello world", None),
        (b"", None),
    ],
)
def test_sniff_format(data: bytes, expected: str | None) -> None:
    assert sniff_format(data) == expected


def test_constants() -> None:
    assert DEFAULT_MAX_PIXELS == 50_000_000
    expected = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".gif", ".webp", ".avif"}
    assert IMAGE_SUFFIXES == frozenset(expected)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.png", True), ("A.PNG", True), ("x.JPeg", True), ("s.dcm", True), ("s.dicom", True),
     ("notes.txt", False), ("noext", False), (".hidden.png", False), ("._a.png", False)],
)
def test_is_image_file(name: str, expected: bool) -> None:
    assert is_image_file(name) is expected
    assert is_image_file(Path("some/dir") / name) is expected


def test_list_images(tmp_path: Path) -> None:
    for rel in ["b.png", "A.JPG", "notes.txt", "._b.png", ".hidden.png", "sub/c.dcm",
                "sub/deeper/d.tif", ".git/e.png", "sub/.ipynb_checkpoints/f.png"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()  # a directory with an image suffix is not a file
    expected = [tmp_path / r for r in ["A.JPG", "b.png", "sub/c.dcm", "sub/deeper/d.tif"]]
    assert list_images(tmp_path) == sorted(expected)
    assert list_images(tmp_path, recursive=False) == sorted(expected[:2])
    assert list_images(str(tmp_path)) == sorted(expected)
    with pytest.raises(NotADirectoryError):
        list_images(tmp_path / "absent")


def test_list_images_survives_symlink_cycle(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"x")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    found = list_images(tmp_path)
    assert tmp_path / "sub" / "a.png" in found and len(found) == 1


# --------------------------------------------------------------------------- check_files


def _mixed_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    good = write(tmp_path, "good.png", encode(Image.fromarray(gray8()), "PNG"))
    empty = write(tmp_path, "empty.png", b"")
    text = write(tmp_path, "text.png", b"this is not an image\n")
    return good, empty, text


def test_check_files_lists_all_bad_files(tmp_path: Path) -> None:
    good, empty, text = _mixed_files(tmp_path)
    with pytest.raises(BadFilesError) as info:
        check_files([empty, good, text])
    assert [name for name, _ in info.value.bad] == [str(empty), str(text)]
    assert str(empty) in str(info.value) and str(text) in str(info.value)
    assert str(good) not in str(info.value)


def test_check_files_skip_bad(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good, empty, text = _mixed_files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fetalplanes.core.io"):
        assert check_files([empty, str(good), text], skip_bad=True) == [good]
    assert str(empty) in caplog.text and str(text) in caplog.text
    assert check_files([]) == []


# --------------------------------------------------------------------------- real data and import hygiene


@pytest.mark.parametrize("folder", ["fetal_planes_db", "hc18"])
def test_real_images_load(folder: str) -> None:
    images_dir = SHARED_DATA / folder / "images"
    if not images_dir.is_dir():
        pytest.skip(f"{images_dir} not present (real sample data is not shipped with the repo)")
    paths = sorted(images_dir.glob("*.png"))
    if not paths:
        pytest.skip(f"no PNG files in {images_dir}")
    for path in paths:
        image = load_image(path)
        assert image.mode in ("L", "LA", "RGB", "RGBA"), path  # 8 bits per channel
        assert image.width > 0 and image.height > 0


def test_core_io_does_not_import_torch() -> None:
    code = "import sys, fetalplanes.core.io; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- decoder errors vs. bugs


@pytest.mark.parametrize("target", ["check_size", "scale_float", "_from_int32"])
def test_a_bug_in_this_projects_code_is_not_reported_as_a_corrupt_file(monkeypatch, target: str) -> None:
    """Only Pillow's calls are guarded: an exception from the project's own code (the size check,
    the intensity rule) propagates as itself, instead of becoming 'corrupt or truncated TIFF data'."""
    import fetalplanes.core.io as io_module

    def broken(*args, **kwargs):
        raise TypeError("a bug in fetalplanes")

    monkeypatch.setattr(io_module, target, broken)
    mode_data = {"check_size": gray8(), "scale_float": gray8().astype(np.float32) / 255,
                 "_from_int32": gray8().astype(np.int32)}[target]
    data = encode(Image.fromarray(mode_data), "TIFF")
    with pytest.raises(TypeError, match="a bug in fetalplanes"):
        load_image(data, name="x.tif")


def test_pillows_own_failures_still_name_the_file() -> None:
    """The narrowed guards still cover every Pillow call: a truncated PNG, a frame that cannot be
    decoded, a conversion Pillow refuses."""
    data = encode(Image.fromarray(gray8(32, 32)), "PNG")
    with pytest.raises(ImageLoadError, match=r"cut\.png: corrupt or truncated PNG data"):
        load_image(data[: len(data) // 2], name="cut.png")
