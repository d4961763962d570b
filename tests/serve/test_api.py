"""API tests of the web service with FastAPI's TestClient: answers, limits and every error code.

One torch Predictor (the tiny checkpoint) is loaded per module and shared by apps built with
different settings, so each test costs milliseconds, not a model load.
"""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
import tempfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import dicom_bytes, encode, png_with_claimed_size

from fetalplanes.explain import service_explainer
from fetalplanes.runtime import Predictor, load_predictor
from fetalplanes.serve.app import create_app
from fetalplanes.serve.service import read_model_card
from fetalplanes.serve.settings import ServeSettings

KEY = "correct horse battery staple"


@pytest.fixture(scope="module")
def backend(tiny_checkpoint: Path) -> Predictor:
    return load_predictor(tiny_checkpoint)


@pytest.fixture(scope="module")
def client(backend: Predictor) -> TestClient:
    return make_client(backend)


def make_client(backend: Predictor, **settings) -> TestClient:
    return TestClient(create_app(backend.path, predictor=backend, explainer_factory=service_explainer, **settings))


@pytest.fixture(scope="module")
def phantom(synth_data: Path) -> Path:
    return sorted((synth_data / "Images").glob("*.png"))[0]


def post_one(client: TestClient, name: str, data: bytes, query: str = "", **kwargs):
    return client.post(f"/v1/predict{query}", files={"file": (name, data, "application/octet-stream")}, **kwargs)


def check_prediction(body: dict, class_names: tuple[str, ...], size: tuple[int, int]) -> None:
    # a rejected input names no plane, only its nearest class (docs/ood.md); exactly one is set
    rejected = body["state"] == "out_of_distribution"
    top = body["nearest_plane"] if rejected else body["plane"]
    assert top in class_names and (body["plane"] if rejected else body["nearest_plane"]) is None
    assert body["topk"][0]["label"] == top
    assert body["confidence"] == pytest.approx(body["topk"][0]["probability"])
    probs = [t["probability"] for t in body["topk"]]
    assert probs == sorted(probs, reverse=True) and len(probs) == 2
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert set(body["probabilities"]) == set(class_names)
    assert body["abstain"] == (body["confidence"] < body["abstain_threshold"])
    assert (body["image"]["width"], body["image"]["height"]) == size
    assert body["explanation"] is None and body["preview_png_base64"] is None


# ------------------------------------------------------------------ happy paths


def test_png_prediction_matches_offline_inference(client, backend, phantom, tiny_checkpoint) -> None:
    response = post_one(client, phantom.name, phantom.read_bytes())
    assert response.status_code == 200, response.text
    body = response.json()
    check_prediction(body, backend.spec.class_names, Image.open(phantom).size)
    assert body["model"] == {"name": backend.spec.name, "version": backend.spec.version, "kind": "checkpoint"}
    # The service must agree with the offline CLI path (same preprocessing, same calibration).
    [offline] = [r.prediction for r in load_predictor(tiny_checkpoint).predict(phantom)]
    for name, p in offline.probabilities.items():
        assert body["probabilities"][name] == pytest.approx(p, abs=1e-5)


def _upload_of_mode(gray: np.ndarray, kind: str) -> Image.Image:
    """``gray`` as a 16-bit grey (grey16), grey + alpha or RGBA image (alpha: a left-to-right ramp)."""
    alpha = np.broadcast_to(np.linspace(0, 255, gray.shape[1]).astype(np.uint8), gray.shape)
    if kind == "grey16":
        return Image.fromarray(gray.astype(np.uint16) * 257)  # the same grey levels at 16 bits
    if kind == "grey_alpha":
        return Image.fromarray(np.stack([gray, alpha], -1), mode="LA")
    return Image.fromarray(np.stack([gray, gray[::-1], np.roll(gray, 9, 1), alpha], -1), mode="RGBA")


@pytest.mark.parametrize("kind", ["grey16", "grey_alpha", "rgba"])
def test_uploads_of_every_mode_are_answered_as_the_predictor_answers_the_file(client, backend, phantom, kind) -> None:
    """The service feeds an upload to the model through the Predictor's one preprocessing: 16-bit
    grey scaled by its bit depth (not clipped at 255), transparent pixels over black (not the colour
    hidden under them). A second conversion in the service (e.g. Pillow's convert('L')) differs."""
    data = encode(_upload_of_mode(np.asarray(Image.open(phantom).convert("L")), kind), "PNG")
    body = post_one(client, f"scan-{kind}.png", data).json()
    [want] = [r.prediction for r in backend.predict(data)]
    assert body["probabilities"] == pytest.approx(want.probabilities, abs=1e-5)
    # The check has teeth: the same upload converted by Pillow alone gets another answer, outside
    # the tolerance above (by ~26x with the tiny test model; the bar is the tolerance itself, so a
    # CPU that rounds differently cannot make this flaky).
    [other] = [r.prediction for r in backend.predict([Image.open(BytesIO(data)).convert("L")])]
    gap = max(abs(other.probabilities[c] - p) for c, p in want.probabilities.items())
    assert gap > 1e-5


@pytest.mark.parametrize("fmt", ["JPEG", "DICOM"])
def test_jpeg_and_dicom(client, backend, phantom, fmt: str) -> None:
    gray = Image.open(phantom).convert("L")
    data = dicom_bytes(np.asarray(gray)) if fmt == "DICOM" else encode(gray.convert("RGB"), "JPEG")
    body = post_one(client, "scan.dcm" if fmt == "DICOM" else "scan.jpg", data).json()
    check_prediction(body, backend.spec.class_names, gray.size)
    assert body["image"]["format"] == fmt.lower()


def test_format_comes_from_content_not_name(client, phantom) -> None:
    body = post_one(client, "misnamed.dcm", phantom.read_bytes()).json()
    assert body["image"]["format"] == "png"


def test_top_k_and_preview(client, backend, phantom) -> None:
    n = backend.spec.num_classes
    body = post_one(client, "a.png", phantom.read_bytes(), f"?top_k={n}&preview=true").json()
    assert [t["label"] for t in body["topk"]] == sorted(body["probabilities"], key=body["probabilities"].get, reverse=True)
    preview = Image.open(BytesIO(base64.b64decode(body["preview_png_base64"])))
    assert preview.format == "PNG" and preview.size == Image.open(phantom).size
    assert np.array_equal(np.asarray(preview.convert("L")), np.asarray(Image.open(phantom).convert("L")))


def test_batch_reports_each_item(client, backend, phantom) -> None:
    good = phantom.read_bytes()
    files = [("files", ("a.png", good, "image/png")), ("files", ("notes.txt", b"just text", "text/plain")),
             ("files", ("b.png", good[: len(good) // 2], "image/png")), ("files", ("c.png", good, "image/png"))]
    response = client.post("/v1/predict/batch", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["count"], body["failed"]) == (4, 2)
    assert [item["status"] for item in body["items"]] == [200, 415, 422, 200]
    assert [item["filename"] for item in body["items"]] == ["a.png", "notes.txt", "b.png", "c.png"]
    assert body["items"][0]["result"]["probabilities"] == body["items"][3]["result"]["probabilities"]
    single = post_one(client, "a.png", good).json()
    assert body["items"][0]["result"]["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)


def test_model_info(client, backend) -> None:
    body = client.get("/v1/model").json()
    spec = backend.spec
    assert body["class_names"] == list(spec.class_names)
    assert body["preprocessing"]["image_size"] == spec.preprocessing.image_size
    assert (body["temperature"], body["abstain_threshold"]) == (spec.temperature, spec.abstain_threshold)
    assert (body["name"], body["kind"]) == (spec.name, "checkpoint")
    assert body["limits"]["max_upload_bytes"] == 20 * 1024 * 1024
    assert body["explain_available"] == (body["explain_detail"] is None)


def test_model_card_and_metrics_files(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    (tmp_path / "metrics.json").write_text(json.dumps({"top1": 0.9, "ece": float("nan"), "ci": {"low": 0.8}}))
    front = {"model-index": [{"name": "m", "results": [{"dataset": {"name": "FETAL_PLANES_DB", "split": "official/test"},
                                                          "metrics": [{"name": "Top-1 accuracy", "value": 0.91}]}]}]}
    (tmp_path / "MODEL_CARD.md").write_text("---\n" + yaml.safe_dump(front) + "---\n# Model card\nTop-1 0.91")
    metrics, card = read_model_card(model, {"val_f1": 0.5})
    card_results = [{"name": "Top-1 accuracy", "value": 0.91, "dataset": "FETAL_PLANES_DB", "split": "official/test"}]
    assert metrics == {"val_f1": 0.5, "top1": 0.9, "ece": None, "ci": {"low": 0.8}, "model_card": card_results}
    assert "# Model card" in card
    (tmp_path / "model.metrics.json").write_text(json.dumps({"top1": 0.7}))
    assert read_model_card(model, {})[0]["top1"] == 0.7  # the model's own file wins
    (tmp_path / "MODEL_CARD.md").write_text("---\n: not [yaml\n---\n# card")
    assert read_model_card(model, {})[0] == {"top1": 0.7}  # a broken front matter is ignored
    assert read_model_card(tmp_path / "other" / "m.onnx", {}) == ({}, None)


def test_health_and_openapi(client, backend) -> None:
    assert client.get("/health").json() == {"status": "ok", "model": backend.spec.name, "version": backend.spec.version}
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/predict/batch", "/v1/model", "/health"} <= set(schema["paths"])
    predict = schema["paths"]["/v1/predict"]["post"]
    assert "multipart/form-data" in predict["requestBody"]["content"]
    assert {"200", "413", "415", "422"} <= set(predict["responses"])
    assert {"PredictResponse", "BatchResponse", "ModelInfo", "ErrorResponse"} <= set(schema["components"]["schemas"])
    assert client.get("/docs").status_code == 404  # FastAPI's docs page would load scripts from a CDN


def test_page_and_assets_are_self_contained(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "Research use only" in page.text and "not a medical device" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        response = client.get(asset)
        assert response.status_code == 200
        assert "http://" not in response.text and "https://" not in response.text, asset
    assert "https://" not in page.text and "http://" not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"


# ------------------------------------------------------------------ explanations


def test_explain_checkpoint_gives_overlay_of_upload_size(client, backend, phantom) -> None:
    reason = client.app.state.service.heatmaps.unavailable_reason
    if reason:
        pytest.skip(reason)
    response = post_one(client, "a.png", phantom.read_bytes(), "?explain=true")
    assert response.status_code == 200, response.text
    explanation = response.json()["explanation"]
    from fetalplanes.core.cam_methods import HeatMapSettings

    assert explanation["available"] and explanation["method"] == HeatMapSettings.from_spec(backend.spec).method
    overlay = Image.open(BytesIO(base64.b64decode(explanation["overlay_png_base64"])))
    assert overlay.format == "PNG" and overlay.size == Image.open(phantom).size


def test_explain_onnx_is_clearly_unavailable(backend, phantom, onnx_model: Path) -> None:
    onnx_client = TestClient(create_app(onnx_model))
    body = post_one(onnx_client, "a.png", phantom.read_bytes(), "?explain=true").json()
    assert body["model"]["kind"] == "onnx"
    assert body["explanation"]["available"] is False and body["explanation"]["overlay_png_base64"] is None
    assert "not available" in body["explanation"]["detail"] and "ONNX" in body["explanation"]["detail"]
    info = onnx_client.get("/v1/model").json()
    assert info["explain_available"] is False and "ONNX" in info["explain_detail"]
    # Same model, same preprocessing: ONNX Runtime and torch agree.
    torch_body = post_one(make_client(backend), "a.png", phantom.read_bytes()).json()
    for name, p in torch_body["probabilities"].items():
        assert body["probabilities"][name] == pytest.approx(p, abs=1e-4)


# ------------------------------------------------------------------ errors


def test_api_key(backend, phantom) -> None:
    secured = make_client(backend, api_key=KEY)
    data = phantom.read_bytes()
    assert post_one(secured, "a.png", data).status_code == 401
    assert post_one(secured, "a.png", data, headers={"X-API-Key": "wrong"}).status_code == 401
    assert secured.get("/v1/model").status_code == 401
    assert "X-API-Key" in secured.get("/v1/model").json()["detail"]
    assert post_one(secured, "a.png", data, headers={"X-API-Key": KEY}).status_code == 200
    assert secured.get("/v1/model", headers={"X-API-Key": KEY}).status_code == 200
    assert secured.get("/health").status_code == 200 and secured.get("/").status_code == 200
    schema = secured.get("/openapi.json").json()
    assert "APIKeyHeader" in schema["components"]["securitySchemes"]


def test_settings_from_environment(tmp_path: Path) -> None:
    env = {"FETALPLANES_MODEL": str(tmp_path / "m.onnx"), "FETALPLANES_API_KEY": KEY,
           "FETALPLANES_CORS_ORIGINS": "https://a.example, https://b.example", "FETALPLANES_MAX_UPLOAD_MB": "5"}
    settings = ServeSettings.from_env(env)
    assert settings.api_key == KEY and settings.max_upload_bytes == 5 * 1024 * 1024
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert ServeSettings.from_env(settings.to_env()) == settings
    with pytest.raises(ValueError, match="FETALPLANES_MODEL"):
        ServeSettings.from_env({})
    with pytest.raises(ValueError, match="FETALPLANES_"):
        ServeSettings.from_env({**env, "FETALPLANES_MAX_BATCH": "many"})


def test_too_large_is_413_even_without_content_length(backend) -> None:
    small = make_client(backend, max_upload_mb=0.05)  # ~51 KB
    noise = np.random.default_rng(0).integers(0, 256, (400, 400), dtype=np.uint8)
    big = encode(Image.fromarray(noise), "PNG")
    assert len(big) > 120_000
    response = post_one(small, "big.png", big)
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    # A chunked body has no Content-Length: the limit is enforced while streaming.
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()
    chunks = (body[i:i + 8192] for i in range(0, len(body), 8192))
    response = small.post("/v1/predict", content=chunks, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413


def test_too_many_files_is_422(backend, phantom) -> None:
    limited = make_client(backend, max_batch=2)
    files = [("files", (f"{i}.png", phantom.read_bytes(), "image/png")) for i in range(3)]
    response = limited.post("/v1/predict/batch", files=files)
    assert response.status_code == 422 and "at most 2" in response.json()["detail"]
    assert limited.post("/v1/predict/batch", files=files[:2]).status_code == 200
    response = limited.post("/v1/predict", files=[("file", f[1]) for f in files[:2]])
    assert response.status_code == 422 and "at most 1" in response.json()["detail"]


@pytest.mark.parametrize(
    "name, data, content_type",
    [
        ("notes.txt", b"patient notes, not an image", None),
        ("photo.heic", struct.pack(">I", 24) + b"ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, None),
        ("random.bin", bytes(range(256)) * 4, None),
        ("form.json", b'{"a": 1}', "application/json"),
    ],
)
def test_unsupported_type_is_415(client, name: str, data: bytes, content_type: str | None) -> None:
    if content_type:
        response = client.post("/v1/predict", content=data, headers={"Content-Type": content_type})
    else:
        response = post_one(client, name, data)
    assert response.status_code == 415
    assert "expected" in response.json()["detail"]
    if name == "photo.heic":  # refused by the one format table, never called "a video"
        assert "HEIC/HEIF" in response.json()["detail"] and "video" not in response.json()["detail"]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_formats_the_cli_reads_are_served(client, backend, phantom, fmt: str) -> None:
    """One format table: the service accepts what `predict` reads (it refused GIF/WebP before)."""
    gray = Image.open(phantom).convert("L")
    body = post_one(client, f"scan.{fmt.lower()}", encode(gray, fmt)).json()
    check_prediction(body, backend.spec.class_names, gray.size)
    assert body["image"]["format"] == fmt.lower()


@pytest.mark.parametrize(
    "case, needle",
    [("truncated", "truncated"), ("empty", "empty"), ("bomb", "decompression bomb"), ("bad-dicom", "DICOM")],
)
def test_corrupt_image_is_422_with_reason(client, phantom, case: str, needle: str) -> None:
    data = {
        "truncated": phantom.read_bytes()[:300],
        "empty": b"",
        "bomb": png_with_claimed_size(60_000, 60_000),
        "bad-dicom": b"\x00" * 128 + b"DICM" + b"\xff" * 64,
    }[case]
    response = post_one(client, f"{case}.png", data)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert needle in detail and f"{case}.png" in detail


def test_max_pixels_setting(backend, phantom) -> None:
    strict = make_client(backend, max_pixels=1000)
    response = post_one(strict, "a.png", phantom.read_bytes())
    assert response.status_code == 422 and "1,000" in response.json()["detail"]


@pytest.mark.parametrize(
    "headers, body, needle",
    [
        ({"Content-Type": "multipart/form-data"}, b"x", "boundary"),
        ({"Content-Type": "multipart/form-data; boundary=zz"}, b"--zz\r\nnot a header line\r\n\r\n", "multipart"),
        ({"Content-Type": "multipart/form-data; boundary=zz"}, b"--zz--\r\n", "no file"),
    ],
)
def test_malformed_multipart_is_422(client, headers: dict, body: bytes, needle: str) -> None:
    response = client.post("/v1/predict", content=body, headers=headers)
    assert response.status_code == 422 and needle in response.json()["detail"]


def _multipart(disposition: str, data: bytes, boundary: str = "zz") -> tuple[bytes, str]:
    body = (f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n").encode()
    return body + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _read(body: bytes, content_type: str):
    import asyncio

    from fetalplanes.serve.uploads import read_uploads

    async def chunks():
        yield body

    return asyncio.run(read_uploads(chunks(), content_type, str(len(body)), max_bytes=1 << 20, max_files=4))


@pytest.mark.parametrize(
    "disposition, expected",
    [
        ("form-data; name=\"file\"; filename=\"scan.png\"", "scan.png"),
        ("form-data; name=\"file\"; filename*=UTF-8''%C3%A9cho%201.png", "\u00e9cho 1.png"),  # RFC 6266 only
        ("form-data; name=\"file\"; filename=\"fallback.png\"; filename*=UTF-8''r%C3%A9el.png", "r\u00e9el.png"),
    ],
)
def test_upload_file_names_plain_and_rfc6266(disposition: str, expected: str) -> None:
    (upload,) = _read(*_multipart(disposition, b"PNGDATA"))
    assert upload.filename == expected and bytes(upload.data) == b"PNGDATA" and upload.field == "file"


def test_upload_part_without_a_file_is_named_in_the_422() -> None:
    from fetalplanes.serve.uploads import UploadError

    with pytest.raises(UploadError) as info:
        _read(*_multipart("form-data; name=\"scan\"", b"PNGDATA"))
    assert info.value.status == 422 and "'scan'" in info.value.detail and "filename" in info.value.detail


def test_filename_star_upload_is_predicted(client, phantom) -> None:
    body, content_type = _multipart("form-data; name=\"file\"; filename*=UTF-8''b%C3%A9b%C3%A9.png",
                                    phantom.read_bytes())
    response = client.post("/v1/predict", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200 and response.json()["filename"] == "b\u00e9b\u00e9.png"


@pytest.mark.parametrize("query, needle", [("?top_k=99", "top_k"), ("?top_k=0", "top_k"), ("?explain=maybe", "explain"),
                                           ("?explian=true", "explian")])
def test_bad_query_is_422_with_one_sentence(client, phantom, query: str, needle: str) -> None:
    response = post_one(client, "a.png", phantom.read_bytes(), query)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], str) and needle in response.json()["detail"]


# ------------------------------------------------------------------ hygiene


def test_nothing_written_and_names_never_used_as_paths(client, phantom, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    opened: list[str] = []
    for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp"):
        original = getattr(tempfile, name)
        monkeypatch.setattr(tempfile, name, lambda *a, _n=name, _o=original, **k: opened.append(_n) or _o(*a, **k))
    # > 1 MB: Starlette's own form parser would spool this to a temporary file.
    noise = np.random.default_rng(1).integers(0, 256, (1100, 1100), dtype=np.uint8)
    big = encode(Image.fromarray(noise), "PNG")
    assert len(big) > 1024 * 1024
    response = post_one(client, "../../../tmp/evil/../x.png", big)
    assert response.status_code == 200 and response.json()["filename"] == "x.png"
    assert client.post("/v1/predict/batch", files=[("files", ("/etc/passwd", phantom.read_bytes(), "image/png"))]).json()[
        "items"][0]["filename"] == "passwd"
    assert opened == [] and list(tmp_path.iterdir()) == []


def test_cors_off_by_default_and_on_when_configured(client, backend) -> None:
    origin = {"Origin": "https://elsewhere.example"}
    assert "access-control-allow-origin" not in client.get("/health", headers=origin).headers
    cors = make_client(backend, cors_origins=["https://elsewhere.example"])
    assert cors.get("/health", headers=origin).headers["access-control-allow-origin"] == "https://elsewhere.example"
    other = cors.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_model_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing.onnx: model file not found.*\.ckpt.*\.onnx"):
        create_app(tmp_path / "missing.onnx")
    weird = tmp_path / "model.h5"
    weird.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"model.h5: unknown model file type '.h5'.*\.ckpt.*\.onnx"):
        create_app(weird)


def test_serve_module_imports_without_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None\n"
            "import fetalplanes.serve.app, fetalplanes.serve.explainers, fetalplanes.cli.serve\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_cli_loads_the_model_before_its_banner(tmp_path: Path, workers: str) -> None:
    """Finding: the "fetalplanes: http://..." banner came before the model was loaded, so a bad
    model file left a banner for a service that never started."""
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07" + b"\x00" * 64)  # protobuf-looking bytes, not a model
    cmd = [sys.executable, "-c", "from fetalplanes.cli import main; main()", "serve", "--model", str(bad),
           "--port", "1", "--workers", workers]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "http://" not in result.stdout + result.stderr  # no banner
    # The service logs its thread policy at start-up (INFO); the refusal itself is one line.
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("INFO threads:")]
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_cli_reports_a_bad_model_in_one_line(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "from fetalplanes.cli import main; main()", "serve", "--model", str(tmp_path / "none.onnx")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "model file not found" in result.stderr and "Traceback" not in result.stderr
    assert "http://" not in result.stdout
