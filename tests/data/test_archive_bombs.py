"""Zip bombs are refused before anything is extracted, whatever the Python patch level (issue 18,
kind 3): overlapping entries, a declared total above the limit, extreme ratios. Nothing is left
half-unpacked. Built here, plus the shared "quoted-overlap" case through `fetalplanes download`."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from fetalplanes.data import download as dl
from fetalplanes.data.download import DownloadError, extract_archive


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".fetalplanes-extract"))


def test_overlapping_entries_are_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "a.zip", {"x.csv": b"a" * 300, "Images/y.png": b"b" * 300})
    data = bytearray(archive.read_bytes())
    # Point the second central-directory entry's local-header offset into the first entry's data.
    second = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, second + 42, 40)
    archive.write_bytes(bytes(data))
    out = tmp_path / "db"
    with pytest.raises(DownloadError, match=r"a.zip: entry 'Images/y.png' overlaps entry 'x.csv'"):
        extract_archive(archive, out)
    assert not out.exists() and not _leftovers(tmp_path)


def test_extreme_ratio_is_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "r.zip", {"zeros.png": b"\0" * (4 << 20)}, zipfile.ZIP_DEFLATED)
    with pytest.raises(DownloadError, match=r"r.zip: entry 'zeros.png' declares 4,194,304 bytes .* at most 200"):
        extract_archive(archive, tmp_path / "db")
    assert not (tmp_path / "db").exists() and not _leftovers(tmp_path)


def test_declared_total_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _zip(tmp_path / "t.zip", {"a.png": b"x" * 5000, "b.png": b"y" * 5000})
    monkeypatch.setattr(dl, "LIMITS", replace(dl.LIMITS, archive_total_bytes=8000))
    with pytest.raises(DownloadError, match=r"t.zip: entries declare 10,000 bytes in all; at most 8,000"):
        extract_archive(archive, tmp_path / "db")


def test_shared_overlap_bomb_through_the_cli(shared_cases: Path, tmp_path: Path) -> None:
    case = shared_cases / "zip_overlap_bomb"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(case / "serve_mirror.py"), str(case / "FETAL_PLANES_DB_overlap_bomb.zip"),
                               str(port), "60"])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        out = tmp_path / "db"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-m", "fetalplanes", "download", "--out", str(out),
                               "--api", f"http://127.0.0.1:{port}/api/records"],
                              capture_output=True, text=True, timeout=120, env=env)
    finally:
        server.terminate()
        server.wait(10)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "refusing to extract" in proc.stderr and "cannot unpack" not in proc.stderr
    assert "dataset ready" not in proc.stdout + proc.stderr
    assert not out.exists() and not _leftovers(tmp_path)
    used = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    assert used < 1_000_000, f"{used:,} bytes left on disk"
