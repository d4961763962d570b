"""A single-frame DICOM or TIFF upload has its header parsed once (it was parsed twice: once to
count frames, once to decode), and still gets the same answer and the same errors."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fetalplanes.core import dicom as core_dicom
from fetalplanes.core import io as core_io
from fetalplanes.core.io import load_image
from fetalplanes.serve.app import create_app
from serve_helpers import dicom_bytes

from test_cine import MeanPredictor


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    return TestClient(create_app(model, predictor=MeanPredictor(model)))


def _spy(monkeypatch: pytest.MonkeyPatch, cls: type) -> list[int]:
    calls: list[int] = []
    real = cls.__init__

    def counting(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", counting)
    return calls


def _tiff() -> bytes:
    buf = BytesIO()
    Image.fromarray((np.arange(48 * 64) % 251).astype(np.uint8).reshape(48, 64)).save(buf, "TIFF")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["dicom", "tiff"])
def test_a_single_frame_header_is_parsed_once_per_upload(client: TestClient, monkeypatch: pytest.MonkeyPatch,
                                                         kind: str) -> None:
    data = dicom_bytes((np.arange(48 * 64) % 251).astype(np.uint8).reshape(48, 64)) if kind == "dicom" else _tiff()
    want = np.asarray(load_image(data))
    calls = _spy(monkeypatch, core_dicom.DicomFrames if kind == "dicom" else core_io.PilFrames)
    r = client.post("/v1/predict?preview=true", files={"file": (f"x.{kind}", data, "application/octet-stream")})
    assert r.status_code == 200, r.text
    assert len(calls) == 1  # parsed once
    body = r.json()
    assert body["cine"] is None and body["image"]["format"] == kind
    import base64
    preview = Image.open(BytesIO(base64.b64decode(body["preview_png_base64"])))
    assert np.array_equal(np.asarray(preview.convert("L")), want)  # the same pixels as load_image


def test_a_damaged_single_frame_dicom_still_gets_its_one_line_422(client: TestClient) -> None:
    from pydicom import dcmread

    ds = dcmread(BytesIO(dicom_bytes(np.zeros((48, 64), np.uint8))))
    ds.PixelData = ds.PixelData[:100]
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    r = client.post("/v1/predict", files={"file": ("cut.dcm", buf.getvalue(), "application/dicom")})
    assert r.status_code == 422 and r.json()["detail"].startswith("cut.dcm: ")
    assert "\n" not in r.json()["detail"]
