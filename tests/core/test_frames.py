"""Per-frame robust reading (core/frames.py): bad frames skipped and named, short reads reported,
DICOM timing validated with a fallback, time stamps never negative."""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fetalplanes.core.errors import ImageLoadError
from fetalplanes.core.frames import DEFAULT_FPS, dicom_frame_rate, open_frames

SHARED_VIDEO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "video_us" / "pydstk_ultrasound.avi"


def cine(n_frames: int, n_present: int | None = None, **attrs) -> bytes:
    """An 8-bit native cine of ``n_frames`` declared frames; ``n_present`` frames of data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = np.stack([np.full((6, 8), 10 * (i + 1), np.uint8) for i in range(n_frames)])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.3.1", generate_uid()
    ds.set_pixel_data(arr, "MONOCHROME2", 8)
    if n_present is not None:
        ds.PixelData = ds.PixelData[: n_present * 48]
    for key, value in attrs.items():
        setattr(ds, key, value)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_shared_bad_frame_is_skipped_and_named(shared_cases: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = shared_cases / "cine_bad_frame"
    with caplog.at_level(logging.WARNING):
        reader = open_frames(folder / "c05_cine_badframe.dcm")
        frames = list(reader)
    good = {f.index: np.asarray(f.image) for f in open_frames(folder / "c05_cine_ok.dcm")}
    assert [f.index for f in frames] == [0, 1, 2, 4, 5]
    for frame in frames:
        assert np.array_equal(np.asarray(frame.image), good[frame.index])
    (err,) = reader.skipped
    assert err.frame == 3 and "c05_cine_badframe.dcm: frame 3:" in str(err) and "\n" not in str(err)
    assert reader.info["frames_skipped"] == 1 and reader.info["frames_declared"] == 6
    assert "1 of 6 frame(s) skipped (frame 3)" in caplog.text


@pytest.mark.parametrize("variant", ["comma", "zero", "neg"])
def test_shared_invalid_frame_time_falls_back(shared_cases: Path, variant: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    path = shared_cases / "cine_frame_time" / f"c12_cine_frametime_{variant}.dcm"
    with caplog.at_level(logging.WARNING):
        reader = open_frames(path)
        times = [f.time_s for f in reader]
    assert reader.fps == DEFAULT_FPS and reader.info["fps_source"] == "default"
    assert times == [i / DEFAULT_FPS for i in range(3)] and min(times) >= 0
    (line,) = reader.info["warnings"]
    assert path.name in line and "FrameTime" in line and line in caplog.text


def test_timing_attributes_in_order_with_fallback() -> None:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.FrameTime, ds.CineRate = "-40", "30"
    assert dicom_frame_rate(ds, "x.dcm")[:2] == (30.0, "CineRate")
    ds = Dataset()
    ds.RecommendedDisplayFrameRate = "50"
    assert dicom_frame_rate(ds, "x.dcm") == (50.0, "RecommendedDisplayFrameRate", [])
    ds = Dataset()
    ds.FrameTime = "20"
    assert dicom_frame_rate(ds, "x.dcm") == (50.0, "FrameTime", [])
    assert dicom_frame_rate(Dataset(), "x.dcm") == (DEFAULT_FPS, "default", [])


def test_native_short_read_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        reader = open_frames(cine(5, n_present=3), name="short.dcm")
        frames = list(reader)
    assert [np.asarray(f.image)[0, 0] for f in frames] == [10, 20, 30]
    assert "3 of 5 frame(s) present" in reader.info["short_read"]
    assert "short.dcm: short read" in caplog.text


def test_wrong_number_of_frames_in_encapsulated_data_is_a_short_read() -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    codestreams = []
    for value in (40, 80, 120):
        buf = BytesIO()
        Image.new("L", (8, 6), value).save(buf, "JPEG", quality=95)
        codestreams.append(buf.getvalue())
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.3.1", generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 6, 8, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = 5  # the data holds 3
    ds.PixelData = encapsulate(codestreams)
    ds["PixelData"].VR = "OB"
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    reader = open_frames(out.getvalue(), name="lying.dcm")
    assert len(list(reader)) == 3 and reader.info["short_read"]


def test_folder_skips_a_bad_file_by_index(tmp_path: Path) -> None:
    for i in range(3):
        Image.new("L", (8, 6), 50 * i).save(tmp_path / f"f{i}.png")
    (tmp_path / "f1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    reader = open_frames(tmp_path, fps=10)
    assert [(f.index, f.time_s) for f in reader] == [(0, 0.0), (2, 0.2)]
    assert reader.skipped[0].frame == 1 and "f1.png" in str(reader.skipped[0])


def test_no_readable_frame_is_one_error() -> None:
    data = bytearray(cine(2))
    with pytest.raises(ImageLoadError, match=r"empty\.dcm.*fewer|empty\.dcm.*no frame|empty\.dcm.*cannot decode"):
        list(open_frames(bytes(data[:-96]), name="empty.dcm"))


def test_single_image_is_one_frame() -> None:
    buf = BytesIO()
    Image.new("L", (4, 4), 9).save(buf, "PNG")
    assert [(f.index, f.time_s) for f in open_frames(buf.getvalue())] == [(0, 0.0)]


def test_real_video_reads_every_frame() -> None:
    pytest.importorskip("av")
    if not SHARED_VIDEO.is_file():
        pytest.skip("../shared/data/video_us is not present")
    reader = open_frames(SHARED_VIDEO)
    times = [f.time_s for f in reader]
    assert len(times) == 40 and reader.fps == 30.0 and min(times) >= 0 and reader.info["short_read"] is None


def _faststart_mp4(path: Path, n: int = 20) -> Path:
    """An MJPEG mp4 with its index (moov) first, so a truncated copy still opens."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        for i in range(n):
            gray = np.random.default_rng(i).integers(0, 255, (48, 64), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(gray, format="gray").reformat(format="yuvj420p")))
        container.mux(stream.encode())
    return path


def test_truncated_video_is_a_reported_short_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    video = _faststart_mp4(tmp_path / "whole.mp4")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[: int(video.stat().st_size * 0.6)])
    with caplog.at_level(logging.WARNING):
        reader = open_frames(cut)
        n = len(list(reader))
    assert 0 < n < 20 and f"{n} of 20 declared frame(s) present" in reader.info["short_read"]
    assert "cut.mp4: short read" in caplog.text


def test_truncated_mp4_names_the_file(tmp_path: Path) -> None:
    pytest.importorskip("av")
    from fetalplanes.deploy.stream import write_phantom_video

    video = write_phantom_video(tmp_path / "sweep.mp4", 8, (64, 48))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    with pytest.raises(ImageLoadError, match=r"cut\.mp4: cannot open video"):
        list(open_frames(cut))


def test_read_frame_gives_the_frame_and_the_count_and_refuses_one_past_the_end(tmp_path: Path) -> None:
    from PIL import Image

    from fetalplanes.core.errors import ImageLoadError
    from fetalplanes.core.frames import open_frames, read_frame

    data = cine(4)
    frame, count = read_frame(data, 2, name="c.dcm")
    want = [f.image for f in open_frames(data, name="c.dcm")][2]
    assert (frame.index, count) == (2, 4) and np.array_equal(np.asarray(frame.image), np.asarray(want))
    with pytest.raises(ImageLoadError, match=r"^c.dcm: frame 4 does not exist: the file has 4 frame\(s\); "
                                             r"expected a frame from 0 to 3$"):
        read_frame(data, 4, name="c.dcm")
    Image.new("L", (8, 8), 7).save(tmp_path / "still.png")
    assert read_frame(tmp_path / "still.png", 0)[1] == 1
    with pytest.raises(ImageLoadError, match=r"frame 1 does not exist: the file has 1 frame\(s\)"):
        read_frame(tmp_path / "still.png", 1)
