"""Atomic writes: complete files or nothing, normal permissions, no temp files left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fetalplanes.core import atomic


def test_write_json_and_permissions(tmp_path: Path):
    out = atomic.write_json(tmp_path / "sub" / "m.json", {"a": 1})
    assert out.read_text().strip().startswith("{")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask


def test_failure_leaves_old_file_and_no_temp(tmp_path: Path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]
