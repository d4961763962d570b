"""The service under abuse (issue 18): a per-request decoded-pixel budget (batch items over it are
refused by name, the others answered), deflate bombs refused, HEAD on / and /health, and slow or
greedy clients cut off by the request guard (a real uvicorn on 127.0.0.1)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import dicom_bytes, encode

from fetalplanes.serve.app import create_app
from fetalplanes.runtime import Predictor, load_predictor
from fetalplanes.serve.guard import RequestGuard


@pytest.fixture(scope="module")
def backend(tiny_checkpoint: Path) -> Predictor:
    return load_predictor(tiny_checkpoint)


def _png(size: int) -> bytes:
    return encode(Image.fromarray((np.arange(size * size) % 251).astype(np.uint8).reshape(size, size)), "PNG")


def test_batch_items_over_the_request_budget_are_refused_by_name(backend: Predictor) -> None:
    client = TestClient(create_app(backend.path, predictor=backend, max_pixels=10_000, request_pixels=25_000))
    files = [("files", (f"{n}.png", _png(s), "image/png")) for n, s in (("a", 100), ("b", 100), ("c", 100), ("d", 50))]
    body = client.post("/v1/predict/batch", files=files).json()
    assert [i["status"] for i in body["items"]] == [200, 200, 413, 200]
    assert body["failed"] == 1 and body["items"][2]["error"].startswith("c.png: 100x100 = 10,000 pixels exceeds")
    assert "budget (5,000 of 25,000)" in body["items"][2]["error"]
    assert body["items"][3]["result"]["image"]["width"] == 50


def test_shared_batch_of_big_images_answers_one_and_names_the_rest(backend: Predictor, shared_cases: Path) -> None:
    data = (shared_cases / "batch_pixel_budget" / "big_rgba_39.7mpx.png").read_bytes()
    client = TestClient(create_app(backend.path, predictor=backend))
    files = [("files", (f"big{i}.png", data, "image/png")) for i in range(16)]
    body = client.post("/v1/predict/batch", files=files).json()
    assert body["items"][0]["status"] == 200
    assert [i["status"] for i in body["items"][1:]] == [413] * 15
    assert all(i["error"].startswith(f"big{k + 1}.png: 6300x6300") for k, i in enumerate(body["items"][1:]))


def test_deflate_bomb_upload_is_422_naming_the_tag(backend: Predictor) -> None:
    from io import BytesIO

    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(BytesIO(dicom_bytes(np.zeros((64, 64), np.uint8))))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.add_new((0xFFFC, 0xFFFC), "OB", b"\0" * (17 * 2**20))  # trailing padding: inflates to 17 MiB
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    bomb = buf.getvalue()
    assert len(bomb) < 100_000
    client = TestClient(create_app(backend.path, predictor=backend))
    resp = client.post("/v1/predict", files={"file": ("bomb.dcm", bomb, "application/dicom")})
    assert resp.status_code == 422 and "bomb.dcm: DICOM element (FFFC,FFFC)" in resp.json()["detail"]


def test_head_on_health_and_page(backend: Predictor) -> None:
    client = TestClient(create_app(backend.path, predictor=backend))
    for path in ("/health", "/"):
        resp = client.head(path)
        assert resp.status_code == 200 and resp.content == b""


# ------------------------------------------------------------------ the guard, on a real server
async def _echo(scope, receive, send) -> None:
    """Reads the whole body, answers its length; GET answers at once."""
    size = 0
    if scope["method"] == "POST":
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(size).encode()})


@pytest.fixture()
def guarded():
    uvicorn = pytest.importorskip("uvicorn")
    guard = RequestGuard(_echo, receive_s=1.0, max_buffered=1_000_000)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(guard, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.02)
    yield guard, port
    server.should_exit = True
    thread.join(10)


def _post_head(port: int, length: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
    return sock


def _answer(sock: socket.socket) -> str:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data.decode("latin-1")


def test_a_stalled_upload_gets_408_at_the_deadline_and_its_bytes_are_released(guarded) -> None:
    guard, port = guarded
    sock = _post_head(port, 500_000)
    sock.sendall(b"x" * 100_000)  # then stalls
    t0 = time.monotonic()
    answer = _answer(sock)  # the server closes the connection after answering
    assert answer.startswith("HTTP/1.1 408") and "not received within 1 s" in answer
    assert 0.5 < time.monotonic() - t0 < 5
    assert guard.buffered == 0
    with socket.create_connection(("127.0.0.1", port), timeout=5) as health:  # still answering
        health.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _answer(health).startswith("HTTP/1.1 200")


def test_over_the_buffer_cap_the_slowest_upload_is_evicted_with_503(guarded) -> None:
    guard, port = guarded
    first = _post_head(port, 900_000)
    first.sendall(b"x" * 700_000)  # held by the guard while the first stalls
    time.sleep(0.3)
    second = _post_head(port, 500_000)
    second.sendall(b"y" * 500_000)  # does not fit beside the first: the stalled first is evicted
    evicted = _answer(first)
    assert evicted.startswith("HTTP/1.1 503") and "retry-after" in evicted.lower() and "slowest" in evicted
    assert _answer(second).startswith("HTTP/1.1 200")  # the prompt upload is served
    assert guard.buffered == 0 and not guard.flights


def test_a_single_upload_over_the_cap_is_refused_with_503(guarded) -> None:
    guard, port = guarded
    sock = _post_head(port, 1_500_000)
    try:
        sock.sendall(b"z" * 1_500_000)
    except OSError:
        pass  # the server may close before reading it all
    try:
        answer = _answer(sock)
    except ConnectionResetError:  # the server closed with unread bytes: TCP may drop its answer
        answer = "reset"
    assert answer.startswith("HTTP/1.1 503") or answer == "reset"
    assert guard.buffered == 0
    ok = _post_head(port, 10)
    ok.sendall(b"z" * 10)
    assert _answer_once(ok).startswith("HTTP/1.1 200")  # a well-behaved client is served again


def _answer_once(sock: socket.socket) -> str:
    time.sleep(0.2)
    sock.settimeout(5)
    return sock.recv(65536).decode("latin-1")
