"""Issue 21 item 4: a cine upload is answered frame by frame, and the answer says which frame it shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fetalplanes.core.spec import ModelSpec, Preprocessing
from fetalplanes.serve.app import create_app
from fetalplanes.runtime.predictor import Predictor


class MeanPredictor(Predictor):
    """A real Predictor (shared decode and decide) with logits from the mean intensity: no training."""

    kind = "onnx"

    def __init__(self, path: Path) -> None:
        super().__init__(path, ModelSpec(name="mean", task="plane", class_names=("Fetal brain", "Other"),
                                         architecture={}, preprocessing=Preprocessing(image_size=32)))

    def _run(self, x: np.ndarray) -> np.ndarray:
        m = x.mean(axis=(1, 2, 3))
        return np.stack([m * 8, np.zeros_like(m)], axis=1).astype(np.float32)


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    return TestClient(create_app(model, predictor=MeanPredictor(model)))


def test_every_frame_of_a_dicom_cine_is_answered(client: TestClient, shared_data: Path) -> None:
    cine = shared_data / "dicom_us" / "dbdicom_0020.DCM"
    r = client.post("/v1/predict", files={"file": (cine.name, cine.read_bytes(), "application/dicom")})
    assert r.status_code == 200, r.text
    body = r.json()
    c = body["cine"]
    assert c["frames_declared"] == c["frames_answered"] == 11
    assert [f["frame"] for f in c["frames"]] == list(range(11))
    top = max(c["frames"], key=lambda f: f["confidence"])
    assert c["answered_frame"] == top["frame"]
    assert (body["plane"], body["confidence"]) == (top["plane"], pytest.approx(top["confidence"]))
    assert len({f["confidence"] for f in c["frames"]}) > 1  # real frames differ: not frame 0 copied
    assert {b["plane"] for b in c["best_per_plane"]} == {f["plane"] for f in c["frames"]}


def test_a_single_frame_has_no_cine_block_and_batches_answer_cines_too(client: TestClient, shared_data: Path) -> None:
    one = shared_data / "dicom_us" / "US1_UNCR.dcm"
    cine = shared_data / "dicom_us" / "dbdicom_0020.DCM"
    r = client.post("/v1/predict", files={"file": (one.name, one.read_bytes(), "application/dicom")})
    assert r.status_code == 200 and r.json()["cine"] is None
    r = client.post("/v1/predict/batch", files=[("files", (p.name, p.read_bytes(), "application/dicom")) for p in (one, cine)])
    items = r.json()["items"]
    assert [i["status"] for i in items] == [200, 200]
    assert items[0]["result"]["cine"] is None and items[1]["result"]["cine"]["frames_answered"] == 11


def test_the_page_says_which_frame_it_shows(client: TestClient) -> None:
    js = client.get("/static/app.js").text
    assert "renderCine" in js and "answered_frame" in js and "best_per_plane" in js
    assert 'class="cine-note"' in client.get("/").text


class GatedMeanPredictor(MeanPredictor):
    """MeanPredictor with an OOD gate that rejects the frames farthest from mid-grey (= the most confident)."""

    def __init__(self, path: Path, threshold: float) -> None:
        super().__init__(path)
        self.spec = self.spec.replace(ood={"score": "combined", "threshold": threshold})
        self.threshold = threshold

    def logits_and_ood(self, arrays: np.ndarray):  # noqa: ANN201
        x = self._checked(arrays)
        return self._run(x), np.abs(x.mean(axis=(1, 2, 3))).astype(np.float64)


def test_out_of_distribution_frames_never_stand_for_the_cine(tmp_path: Path, shared_data: Path) -> None:
    cine = shared_data / "dicom_us" / "dbdicom_0020.DCM"
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    means = [abs(r.logits[0] / 8) for r in MeanPredictor(model).predict(cine)]
    gated = GatedMeanPredictor(model, threshold=float(np.median(means)))  # the more confident half is "not a fetal plane"
    client = TestClient(create_app(model, predictor=gated))
    body = client.post("/v1/predict", files={"file": (cine.name, cine.read_bytes(), "application/dicom")}).json()
    frames = body["cine"]["frames"]
    states = {f["state"] for f in frames}
    assert states == {"plane", "out_of_distribution"}, states
    planes = [f for f in frames if f["state"] == "plane"]
    best = max(planes, key=lambda f: f["confidence"])
    assert max(frames, key=lambda f: f["confidence"])["state"] == "out_of_distribution"  # the trap is real
    assert body["cine"]["answered_frame"] == best["frame"] and body["state"] == "plane"
    assert body["cine"]["best_per_plane"] and all(b["state"] == "plane" for b in body["cine"]["best_per_plane"])


def test_an_out_of_distribution_answer_has_no_plane_only_the_nearest(tmp_path: Path, shared_data: Path) -> None:
    """Finding: a rejected upload's answer still filled `plane`, which reads like a classification."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    client = TestClient(create_app(model, predictor=GatedMeanPredictor(model, threshold=-1.0)))  # rejects all
    one = shared_data / "dicom_us" / "US1_UNCR.dcm"
    body = client.post("/v1/predict", files={"file": (one.name, one.read_bytes(), "application/dicom")}).json()
    assert body["state"] == "out_of_distribution"
    assert body["plane"] is None and body["nearest_plane"] in ("Fetal brain", "Other")
    cine = shared_data / "dicom_us" / "dbdicom_0020.DCM"
    body = client.post("/v1/predict", files={"file": (cine.name, cine.read_bytes(), "application/dicom")}).json()
    assert body["plane"] is None and body["cine"]["best_per_plane"] == []
    assert all(f["plane"] is None and f["nearest_plane"] for f in body["cine"]["frames"])
    js = client.get("/static/app.js").text
    assert "nearest_plane" in js  # the page names the nearest class of a rejected image, never "null"


def _cine_bytes(frames: int, size: int) -> bytes:
    """An uncompressed US Multi-frame DICOM of ``frames`` size x size frames."""
    from io import BytesIO

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.set_pixel_data(np.arange(frames * size * size, dtype=np.uint8).reshape(frames, size, size), "MONOCHROME2", 8)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_cine_frames_are_charged_to_the_request_pixel_budget(tmp_path: Path) -> None:
    """A cine must not bypass the per-request decoded-pixel budget (a 300-frame cine was answered whole)."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    client = TestClient(create_app(model, predictor=MeanPredictor(model), max_pixels=32 * 32,
                                   request_pixels=10 * 32 * 32))
    data = _cine_bytes(25, 32)
    body = client.post("/v1/predict", files={"file": ("c.dcm", data, "application/dicom")}).json()
    assert body["cine"]["frames_declared"] == 25 and body["cine"]["frames_answered"] == 10
    assert "decoded-pixel budget" in body["cine"]["note"]
    r = client.post("/v1/predict/batch", files=[("files", ("a.dcm", data, "application/dicom")),
                                                ("files", ("b.dcm", data, "application/dicom"))])
    items = r.json()["items"]
    assert [i["status"] for i in items] == [200, 413]
    assert items[1]["error"].startswith("b.dcm") and "budget" in items[1]["error"]
