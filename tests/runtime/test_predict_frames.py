"""``Predictor.predict`` over multi-frame files: one answer per frame, a bad frame named by index with
the others kept, a short read and a video reported, never a lost good answer (tiny synthetic data)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fetalplanes.runtime import load_predictor


def jpeg_cine(path: Path, values: list[int], damaged: int | None = None, declared: int | None = None) -> Path:
    """A JPEG-baseline DICOM cine of flat 32x24 frames (FrameTime 40 ms); frame ``damaged`` cut short."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    codestreams = []
    for i, value in enumerate(values):
        buf = BytesIO()
        Image.fromarray(np.full((24, 32), value, np.uint8)).save(buf, "JPEG", quality=95)
        codestreams.append(buf.getvalue()[: 200 if i == damaged else None])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.3.1", generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 24, 32, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames, ds.FrameTime = declared or len(values), 40.0
    ds.PixelData = encapsulate(codestreams)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_cine_is_answered_per_frame_and_a_bad_frame_is_named(onnx_model: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    values = [30, 90, 150, 210]
    still = tmp_path / "still.png"
    Image.fromarray(np.full((24, 32), 150, np.uint8)).save(still)
    cine = jpeg_cine(tmp_path / "cine.dcm", values, damaged=1)
    predictor = load_predictor(onnx_model)
    results = predictor.predict([still, cine], batch_size=3)
    assert [(r.path.name, r.frame, r.ok) for r in results] == [
        ("still.png", None, True), ("cine.dcm", 0, True), ("cine.dcm", 1, False), ("cine.dcm", 2, True), ("cine.dcm", 3, True)]
    assert [r.time_s for r in results if r.ok] == [None, 0.0, 0.08, 0.12]  # FrameTime 40 ms
    assert results[2].name == f"{cine}#frame=1" and "cine.dcm: frame 1:" in results[2].error
    assert "\n" not in results[2].error
    assert "1 of 4 frame(s) skipped (frame 1)" in caplog.text
    # Frame 2 and the still image hold the same pixels: the same answer.
    assert results[3].prediction.probabilities == pytest.approx(results[0].prediction.probabilities, abs=1e-6)


def test_short_read_and_video_are_error_rows(onnx_model: Path, tmp_path: Path) -> None:
    short = jpeg_cine(tmp_path / "short.dcm", [40, 80], declared=5)
    video = tmp_path / "clip.mp4"
    pytest.importorskip("av")
    from fetalplanes.deploy.stream import write_phantom_video

    write_phantom_video(video, n_frames=4, size=(64, 48))
    results = load_predictor(onnx_model).predict([short, video])
    rows = [(r.path.name, r.frame, r.ok) for r in results]
    assert rows == [("short.dcm", None, False), ("short.dcm", 0, True), ("short.dcm", 1, True), ("clip.mp4", None, False)]
    assert "short.dcm" in results[0].error and "2 of 5" in results[0].error
    assert "clip.mp4" in results[3].error and "fetalplanes stream" in results[3].error
