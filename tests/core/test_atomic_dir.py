"""atomic_dir: a folder of files appears whole or not at all, and never deletes other files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fetalplanes.core import atomic


def test_new_folder_appears_whole(tmp_path: Path) -> None:
    with atomic.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
        assert not (tmp_path / "out").exists()
    assert (tmp_path / "out" / "sub" / "b.txt").read_text() == "b"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_leaves_nothing_and_old_folder_untouched(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(tmp_path / "new") as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "report.md").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(old) as tmp:
            (tmp / "report.md").write_text("new")
            raise RuntimeError("killed")
    assert (old / "report.md").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["old"]


def test_existing_folder_gets_new_files_and_keeps_others(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.ckpt").write_text("weights")
    (out / "report.md").write_text("old")
    with atomic.atomic_dir(out) as tmp:
        (tmp / "report.md").write_text("new")
    assert (out / "report.md").read_text() == "new" and (out / "best.ckpt").read_text() == "weights"
