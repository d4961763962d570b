"""Seeded mutations of valid PNG, JPEG, DICOM (incl. deflated), H.264 video and zip bytes, run through
the input layer (and the dataset unpacker for zips).

Run by tests/core/test_fuzz.py in a fresh process (``python fuzz_inputs.py N SEED``) so peak
memory can be measured; prints one JSON object: inputs tried, outcomes, failures (any
exception other than a one-line ImageLoadError naming the input), slowest input, RSS growth.
"""

from __future__ import annotations

import json
import resource
import struct
import sys
import time
import traceback
import zlib
from io import BytesIO

import numpy as np
from PIL import Image

from fetalplanes.core.errors import ImageLoadError
from fetalplanes.core.frames import open_frames
from fetalplanes.core.io import load_image

MAX_PIXELS = 4_000_000  # a small limit, so a mutated size field cannot ask for much memory


def _png(arr: np.ndarray) -> bytes:
    buf = BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(arr: np.ndarray) -> bytes:
    buf = BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _dicom(arr: np.ndarray | None = None, jpeg_frames: list[bytes] | None = None, deflated: bool = False,
           **attrs) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.3.1", generate_uid()
    if jpeg_frames is not None:
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 24, 32, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.NumberOfFrames = len(jpeg_frames)
        ds.PixelData = encapsulate(jpeg_frames)
        ds["PixelData"].VR = "OB"
    else:
        ds.set_pixel_data(arr, "MONOCHROME2" if arr.ndim < 3 or arr.shape[-1] != 3 else "RGB", arr.dtype.itemsize * 8)
    for key, value in attrs.items():
        setattr(ds, key, value)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    gray = (np.add.outer(np.arange(24) * 5, np.arange(32) * 3) % 256).astype(np.uint8)
    noise = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    return {
        "png8": _png(gray),
        "png16": _png(gray.astype(np.uint16) * 257),
        "png_rgb": _png(np.stack([gray, noise, gray], -1)),
        "jpeg": _jpeg(gray),
        "dcm8": _dicom(gray),
        "dcm16_window": _dicom(gray.astype(np.uint16) * 16, WindowCenter=2000, WindowWidth=3000),
        "dcm_cine": _dicom(np.stack([gray, noise, gray]), FrameTime="40"),
        "dcm_jpeg_cine": _dicom(jpeg_frames=[_jpeg(gray), _jpeg(noise), _jpeg(gray)], FrameTime="33.3"),
        "dcm_rgb": _dicom(np.stack([gray, noise, gray], -1)),
        "dcm_deflated": _dicom(np.stack([gray, noise, gray]), deflated=True, FrameTime="40"),
        "mp4": _video(),
    }


def _video() -> bytes:
    import tempfile
    from pathlib import Path

    from fetalplanes.deploy.stream import write_phantom_video

    with tempfile.TemporaryDirectory() as tmp:
        return write_phantom_video(Path(tmp) / "v.mp4", n_frames=3, size=(64, 48)).read_bytes()


def zip_seed() -> bytes:
    """A FETAL_PLANES_DB-shaped zip (CSV + two PNGs), deflated."""
    import zipfile

    buf = BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("FETAL_PLANES_DB_data.csv", "Image_name;Patient_num;Plane\na;1;Other\n")
        zf.writestr("Images/a.png", _png(np.zeros((8, 8), np.uint8)))
        zf.writestr("Images/b.png", _png(np.full((8, 8), 9, np.uint8)))
    return buf.getvalue()


def run_zip(name: str, data: bytes) -> str | None:
    """None when unpacking a mutated zip gives a dataset or one DownloadError line, leaving nothing behind."""
    import tempfile
    from pathlib import Path

    from fetalplanes.data.download import DownloadError, extract_archive

    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / f"{name}.zip"
        archive.write_bytes(data)
        try:
            extract_archive(archive, Path(tmp) / "db")
        except DownloadError as err:
            if "\n" in str(err) or name not in str(err):
                return f"bad message: {err!r}"
            if (Path(tmp) / "db").exists() or any(p.name.startswith(".fetalplanes-extract") for p in Path(tmp).iterdir()):
                return "left a half-unpacked folder"
        except Exception:  # noqa: BLE001 - exactly what the fuzz test looks for
            return traceback.format_exc(limit=3)
    return None


def _field_change(data: bytearray, rng: np.random.Generator) -> None:
    """Overwrite a header field with an extreme value: PNG IHDR size (CRC fixed), JPEG SOF size,
    DICOM Rows/Columns/BitsStored/NumberOfFrames/FrameTime values."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        data[16:24] = struct.pack(">II", *rng.choice([0, 1, 65535, 2**31 - 1, 100000], 2))
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
        return
    if data[:2] == b"\xff\xd8":
        at = data.find(b"\xff\xc0")
        if at > 0:
            data[at + 5: at + 9] = struct.pack(">HH", *rng.choice([0, 1, 65535, 20000], 2))
        return
    tags = {b"\x28\x00\x10\x00": "H", b"\x28\x00\x11\x00": "H", b"\x28\x00\x01\x01": "H", b"\x28\x00\x00\x01": "H",
            b"\x28\x00\x08\x00": "S", b"\x18\x00\x63\x10": "S", b"\x28\x00\x02\x00": "H", b"\x28\x00\x03\x01": "H"}
    tag = list(tags)[rng.integers(len(tags))]
    at = data.find(tag)
    if at < 0:
        return
    length = struct.unpack_from("<H", data, at + 6)[0]
    if tags[tag] == "H" and length == 2:
        data[at + 8: at + 10] = struct.pack("<H", int(rng.choice([0, 1, 7, 17, 33, 4096, 65535])))
    elif length:
        text = rng.choice([b"-1", b"0", b"99999", b"3,3", b"nan", b"1e9", b"x"])
        data[at + 8: at + 8 + length] = text.ljust(length)[:length]


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    out = bytearray(data)
    kind = ["truncate", "bitflip", "header", "field"][int(rng.integers(4))]
    if kind == "truncate":
        return kind, bytes(out[: int(rng.integers(1, len(out)))])
    if kind == "bitflip":
        for _ in range(int(rng.integers(1, 9))):
            pos = int(rng.integers(len(out)))
            out[pos] ^= 1 << int(rng.integers(8))
        return kind, bytes(out)
    if kind == "header":  # random bytes in the first 400 bytes: markers, lengths, tags
        for _ in range(int(rng.integers(1, 5))):
            pos = int(rng.integers(min(400, len(out))))
            out[pos] = int(rng.integers(256))
        return kind, bytes(out)
    _field_change(out, rng)
    return kind, bytes(out)


def run_one(name: str, data: bytes) -> str | None:
    """None when the input layer behaved (pixels, or a one-line ImageLoadError naming the input)."""
    try:
        load_image(data, name=name, max_pixels=MAX_PIXELS)
    except ImageLoadError as err:
        if "\n" in str(err) or name not in str(err):
            return f"bad message: {err!r}"
    try:
        reader = open_frames(data, name=name, max_pixels=MAX_PIXELS)
        for _frame in reader:
            pass
        for err in reader.skipped:
            if "\n" in str(err) or name not in str(err):
                return f"bad frame message: {err!r}"
    except ImageLoadError as err:
        if "\n" in str(err) or name not in str(err):
            return f"bad message: {err!r}"
    except Exception:  # noqa: BLE001 - exactly what the fuzz test looks for
        return traceback.format_exc(limit=3)
    return None


def main(count: int, seed: int) -> dict:
    import logging

    logging.disable(logging.WARNING)  # skipped-frame warnings are expected by the hundred
    rng = np.random.default_rng(seed)
    bases = {**seeds(), "zip": zip_seed()}
    failures, slowest = [], (0.0, "")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(count):
        base = list(bases)[i % len(bases)]
        kind, data = mutate(bases[base], rng)
        name = f"fuzz-{i}-{base}-{kind}"
        t0 = time.perf_counter()
        try:
            problem = run_zip(name, data) if base == "zip" else run_one(name, data)
        except Exception:  # noqa: BLE001 - load_image raised something other than ImageLoadError
            problem = traceback.format_exc(limit=3)
        elapsed = time.perf_counter() - t0
        slowest = max(slowest, (elapsed, name))
        if problem:
            failures.append({"input": name, "problem": problem[-800:]})
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"inputs": count, "failures": failures, "slowest_s": slowest[0], "slowest": slowest[1], "rss_growth_mb": grew}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]))))
