"""Tests for fetalplanes.data.download against a loopback HTTP server (no internet needed)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from fetalplanes.data import download as dl
from fetalplanes.data.download import (
    CSV_NAME,
    DownloadError,
    RemoteFile,
    download_fetal_planes,
    download_file,
    extract_archive,
    fetch_record,
)

ARCHIVE_KEY = "FETAL_PLANES_ZENODO.zip"
CSV_TEXT = (
    "Image_name;Patient_num;Plane;Brain_plane;Operator;US_Machine;Train \n"
    "Patient00001_Plane1_1_of_15;1;Other;Not A Brain;Other;Aloka;1 \n"
    "Patient00001_Plane2_1_of_2;1;Fetal abdomen;Not A Brain;Op. 3;Voluson E6;1 \n"
    "Patient00002_Plane3_1_of_3;2;Fetal brain;Trans-thalamic;Op. 1;Voluson S10;0 \n"
    "Patient00003_Plane5_1_of_1;3;Maternal cervix;Not A Brain;Op. 2;Voluson E6;0 \n"
)
IMAGE_NAMES = [line.split(";")[0] for line in CSV_TEXT.splitlines()[1:]]


def _png(seed: int) -> bytes:
    img = Image.new("L", (24, 16))
    img.putdata([(seed * 37 + i * 11) % 256 for i in range(24 * 16)])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def dataset_members(prefix: str = "FETAL_PLANES_ZENODO/") -> dict[str, bytes]:
    members = {f"{prefix}{CSV_NAME}": CSV_TEXT.encode()}
    members.update({f"{prefix}Images/{n}.png": _png(i) for i, n in enumerate(IMAGE_NAMES)})
    return members


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    return make_zip(src / ARCHIVE_KEY, dataset_members())


@dataclass
class FakeZenodo:
    """What the loopback server serves, and what it saw."""

    files: dict[str, bytes]
    base: str = ""
    checksum_override: str | None = None
    cut_first_after: int | None = None  # first file request: send this many bytes, then hang up
    ignore_range: bool = False
    always_cut: bool = False
    ranges: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def api(self) -> str:
        return f"{self.base}/api/records"

    def record_json(self) -> bytes:
        entries = [
            {"key": k, "size": len(v), "id": str(i),
             "checksum": self.checksum_override or "md5:" + hashlib.md5(v).hexdigest(),
             "links": {"self": f"{self.base}/files/{k}/content"}}
            for i, (k, v) in enumerate(self.files.items())
        ]
        return json.dumps({"id": 3904280, "metadata": {"title": "FETAL_PLANES_DB"}, "files": entries}).encode()

    def remote(self, key: str = ARCHIVE_KEY) -> RemoteFile:
        return next(f for f in fetch_record(api=self.api, timeout=5) if f.key == key)


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer  # .state is attached below
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep pytest output quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str], cut_at: int | None = None) -> None:
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(body)), "Connection": "close"}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body if cut_at is None else body[:cut_at])
        self.wfile.flush()
        self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        state: FakeZenodo = self.server.state  # type: ignore[attr-defined]
        if self.path == "/api/records/3904280":
            return self._send(200, state.record_json(), {"Content-Type": "application/json"})
        match = re.fullmatch(r"/files/([^/]+)/content", self.path)
        if not match or match.group(1) not in state.files:
            return self._send(404, b"not found", {})
        data = state.files[match.group(1)]
        rng = self.headers.get("Range")
        with state.lock:
            state.ranges.append(rng)
            first = len(state.ranges) == 1
        cut = state.cut_first_after if first else None
        if state.always_cut:
            cut = len(data) // 3
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and not state.ignore_range:
            start = int(m.group(1))
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            return self._send(206, data[start:], headers, None if cut is None else max(cut - start, 0))
        return self._send(200, data, {"Content-Type": "application/zip"}, cut)


@pytest.fixture
def zenodo(archive: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeZenodo]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(dl, "BACKOFF_BASE_S", 0.01)
    state = FakeZenodo(files={ARCHIVE_KEY: archive.read_bytes(), "README.txt": b"readme\n"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.state = state  # type: ignore[attr-defined]
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_fetch_record_parses_zenodo_json(zenodo: FakeZenodo) -> None:
    files = {f.key: f for f in fetch_record(api=zenodo.api, timeout=5)}
    data = zenodo.files[ARCHIVE_KEY]
    assert files[ARCHIVE_KEY].size == len(data)
    assert files[ARCHIVE_KEY].checksum == "md5:" + hashlib.md5(data).hexdigest()
    assert files[ARCHIVE_KEY].url == f"{zenodo.base}/files/{ARCHIVE_KEY}/content"


def test_fetch_record_entries_shape_and_errors(zenodo: FakeZenodo) -> None:
    parsed = dl._parse_files({"entries": [{"key": "a.zip", "size": 3, "checksum": "md5:x",
                                           "links": {"content": "http://h/a.zip"}}]})
    assert parsed == [RemoteFile("a.zip", "http://h/a.zip", 3, "md5:x")]
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_record("999", api=zenodo.api, timeout=5)


def test_full_download_and_extract(zenodo: FakeZenodo, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "data" / "fetal_planes"
    with caplog.at_level(logging.INFO, logger="fetalplanes.data.download"):
        root = download_fetal_planes(out, api=zenodo.api, progress=True)  # rich bar, non-TTY
    assert "CC BY 4.0" in caplog.text and "Burgos-Artizzu" in caplog.text
    assert root == out.absolute()
    assert (root / CSV_NAME).read_text() == CSV_TEXT
    assert sorted(p.stem for p in (root / "Images").glob("*.png")) == sorted(IMAGE_NAMES)
    with Image.open(root / "Images" / f"{IMAGE_NAMES[0]}.png") as img:
        assert img.size == (24, 16)
    assert not (out.parent / dl.CACHE_DIR_NAME).exists()  # archive not kept by default
    assert sorted(p.name for p in out.parent.iterdir()) == ["fetal_planes"]  # no temp dirs left
    # a second call finds the dataset and does not touch the network
    n = len(zenodo.ranges)
    assert download_fetal_planes(out, api=zenodo.api, progress=False) == root
    assert len(zenodo.ranges) == n


def test_keep_archive_and_skip_complete(zenodo: FakeZenodo, tmp_path: Path) -> None:
    out = tmp_path / "fp"
    download_fetal_planes(out, api=zenodo.api, progress=False, keep_archive=True)
    cached = tmp_path / dl.CACHE_DIR_NAME / ARCHIVE_KEY
    assert md5(cached) == hashlib.md5(zenodo.files[ARCHIVE_KEY]).hexdigest()
    assert len(zenodo.ranges) == 1
    download_file(zenodo.remote(), cached, progress=False)  # verified, skipped
    assert len(zenodo.ranges) == 1


def test_resume_after_connection_cut(zenodo: FakeZenodo, tmp_path: Path) -> None:
    data = zenodo.files[ARCHIVE_KEY]
    half = len(data) // 2
    zenodo.cut_first_after = half
    dest = download_file(zenodo.remote(), tmp_path / ARCHIVE_KEY, progress=False, chunk=256, timeout=5)
    assert zenodo.ranges == [None, f"bytes={half}-"]
    assert md5(dest) == hashlib.md5(data).hexdigest()
    assert not dest.with_name(dest.name + ".part").exists()


def test_resume_existing_part(zenodo: FakeZenodo, tmp_path: Path) -> None:
    data = zenodo.files[ARCHIVE_KEY]
    half = len(data) // 2
    dest = tmp_path / ARCHIVE_KEY
    dest.with_name(dest.name + ".part").write_bytes(data[:half])
    download_file(zenodo.remote(), dest, progress=False, timeout=5)
    assert zenodo.ranges == [f"bytes={half}-"]
    assert dest.read_bytes() == data


def test_server_ignoring_range_restarts_from_zero(zenodo: FakeZenodo, tmp_path: Path) -> None:
    data = zenodo.files[ARCHIVE_KEY]
    zenodo.ignore_range = True
    dest = tmp_path / ARCHIVE_KEY
    dest.with_name(dest.name + ".part").write_bytes(b"x" * 100)  # junk; must not be kept
    download_file(zenodo.remote(), dest, progress=False, timeout=5)
    assert zenodo.ranges == ["bytes=100-"]
    assert dest.read_bytes() == data


def test_retries_exhausted_keeps_part(zenodo: FakeZenodo, tmp_path: Path) -> None:
    zenodo.always_cut = True
    zenodo.ignore_range = True
    dest = tmp_path / ARCHIVE_KEY
    with pytest.raises(DownloadError, match="after 3 attempts.*resume"):
        download_file(zenodo.remote(), dest, progress=False, timeout=5, retries=2)
    assert len(zenodo.ranges) == 3
    assert not dest.exists()
    assert dest.with_name(dest.name + ".part").exists()


def test_wrong_checksum_cleans_up(zenodo: FakeZenodo, tmp_path: Path) -> None:
    zenodo.checksum_override = "md5:" + "0" * 32
    dest = tmp_path / ARCHIVE_KEY
    with pytest.raises(DownloadError, match="checksum mismatch.*expected md5:0{32}") as info:
        download_file(zenodo.remote(), dest, progress=False, timeout=5)
    assert zenodo.base in str(info.value)
    assert not dest.exists()
    assert not dest.with_name(dest.name + ".part").exists()


def test_wrong_checksum_via_top_level_leaves_no_dataset(zenodo: FakeZenodo, tmp_path: Path) -> None:
    zenodo.checksum_override = "md5:" + "f" * 32
    with pytest.raises(DownloadError):
        download_fetal_planes(tmp_path / "fp", api=zenodo.api, progress=False)
    assert not (tmp_path / "fp").exists()
    assert list((tmp_path / dl.CACHE_DIR_NAME).iterdir()) == []


@pytest.mark.parametrize("evil", ["../evil.txt", "FETAL_PLANES_ZENODO/../../evil.txt", "/tmp/evil_abs.txt"])
def test_zip_slip_rejected(tmp_path: Path, evil: str) -> None:
    bad = make_zip(tmp_path / "bad.zip", {**dataset_members(), evil: b"pwned"})
    out = tmp_path / "work" / "out"
    with pytest.raises(DownloadError, match="unsafe member"):
        extract_archive(bad, out)
    assert not out.exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "work" / "evil.txt").exists()
    assert list((tmp_path / "work").iterdir()) == []  # temp dir cleaned up


def test_archive_without_csv(tmp_path: Path) -> None:
    members = {k: v for k, v in dataset_members().items() if not k.endswith(".csv")}
    bad = make_zip(tmp_path / "nocsv.zip", members)
    with pytest.raises(DownloadError, match=re.escape(CSV_NAME)):
        extract_archive(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_archive_without_images(tmp_path: Path) -> None:
    bad = make_zip(tmp_path / "noimg.zip", {f"X/{CSV_NAME}": CSV_TEXT.encode()})
    with pytest.raises(DownloadError, match="Images/"):
        extract_archive(bad, tmp_path / "out")


def test_flat_archive_layout(tmp_path: Path) -> None:
    flat = make_zip(tmp_path / "flat.zip", dataset_members(prefix=""))
    root = extract_archive(flat, tmp_path / "out")
    assert (root / CSV_NAME).is_file() and len(list((root / "Images").iterdir())) == len(IMAGE_NAMES)


def test_existing_dataset_refused_then_overwritten(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / CSV_NAME).write_text("old\n")
    with pytest.raises(DownloadError, match="overwrite=True"):
        extract_archive(archive, out)
    assert (out / CSV_NAME).read_text() == "old\n"
    extract_archive(archive, out, overwrite=True)
    assert (out / CSV_NAME).read_text() == CSV_TEXT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_failed_extraction_leaves_out_dir_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / CSV_NAME).write_text("old\n")
    (out / "Images").mkdir()
    (out / "Images" / "keep.png").write_bytes(b"old")
    members = {k: v for k, v in dataset_members().items() if not k.endswith(".csv")}
    bad = make_zip(tmp_path / "bad.zip", members)
    with pytest.raises(DownloadError):
        extract_archive(bad, out, overwrite=True)
    assert (out / CSV_NAME).read_text() == "old\n"
    assert sorted(p.name for p in (out / "Images").iterdir()) == ["keep.png"]
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DownloadError, match="cannot unpack"):
        extract_archive(corrupt, out, overwrite=True)
    assert (out / CSV_NAME).read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip", "corrupt.zip", "out"]
