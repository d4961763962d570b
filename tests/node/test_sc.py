"""The optional heat-map Secondary Capture: made next to the SR, never holding it back."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from fetalplanes.node.journal import Journal
from fetalplanes.node.pipeline import make_results
from fetalplanes.node.sr import AlgorithmInfo


def _png(image: Image.Image) -> bytes:
    """An overlay stand-in: the frame itself tinted red (the real one is fetalplanes.explain's)."""
    rgb = np.asarray(image.convert("RGB")).copy()
    rgb[..., 0] = 255
    buf = BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _journal_one(tmp_path: Path, source: Path) -> tuple[Journal, str]:
    j = Journal(tmp_path / "journal")
    uid = str(pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID)
    j.receive(uid, source.read_bytes(), {})
    return j, uid


def test_overlay_sc_of_the_best_frame(stub_predictor, dicom_us: Path, tmp_path: Path) -> None:
    j, uid = _journal_one(tmp_path, dicom_us / "dbdicom_0020.DCM")
    seen = []
    outcome = make_results(stub_predictor, j, uid, AlgorithmInfo.from_predictor(stub_predictor),
                           overlay=lambda im: seen.append(im.size) or _png(im))
    assert "failed" not in outcome and seen == [(600, 430)]
    files = {p.name: pydicom.dcmread(p) for p in j.results(uid)}
    assert set(files) == {"sr.dcm", "sc.dcm"}
    sc, sr = files["sc.dcm"], files["sr.dcm"]
    assert sc.BurnedInAnnotation == "YES" and "NOT FOR DIAGNOSTIC USE" in sc.ImageComments
    assert sc.StudyInstanceUID == sr.StudyInstanceUID and sc.SeriesInstanceUID != sr.SeriesInstanceUID
    px = sc.pixel_array
    assert px.shape == (430, 600, 3)
    assert px[:60].max() >= 200 and px[0, :, 1].max() == 0  # the banner: white text on black
    assert (px[100:, :, 0] == 255).all()  # the overlay below it


def test_a_failing_overlay_costs_only_the_sc(stub_predictor, dicom_us: Path, tmp_path: Path) -> None:
    j, uid = _journal_one(tmp_path, dicom_us / "US1_UNCR.dcm")

    def broken(image: Image.Image) -> bytes:
        raise RuntimeError("CAM hook failed")

    make_results(stub_predictor, j, uid, AlgorithmInfo.from_predictor(stub_predictor), overlay=broken)
    assert [p.name for p in j.results(uid)] == ["sr.dcm"] and j.state(uid) == "processed"
