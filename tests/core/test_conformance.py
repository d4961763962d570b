"""Conformance: every file in ../shared/cases and ../shared/data/{dicom_us,video_us,fetal_planes_db,hc18}
through the input layer (load_image, the frame iterator, the CSV rule), checked against the one
table of expected behaviour in input_cases.yaml. For each file: the expected pixels/frames, or one
line naming the file and what was expected; never another exception, never a traceback."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import numpy as np
import pytest
import yaml

from fetalplanes.core.errors import ImageLoadError
from fetalplanes.core.frames import open_frames
from fetalplanes.core.io import load_image
from fetalplanes.core.preprocess import to_gray
from fetalplanes.core.tables import read_table

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
TABLE = yaml.safe_load((Path(__file__).with_name("input_cases.yaml")).read_text())
FOLDERS = ("cases", "data/dicom_us", "data/video_us", "data/fetal_planes_db", "data/hc18")


def _files() -> list[str]:
    found = [SHARED / "cases" / "README.md", SHARED / "data" / "README.md"]
    for folder in FOLDERS:
        found += [p for p in (SHARED / folder).rglob("*") if p.is_file()]
    return sorted({p.relative_to(SHARED).as_posix() for p in found if p.is_file()})


def _row(rel: str) -> dict:
    for row in TABLE:
        if fnmatch.fnmatch(rel, row["files"]):
            return row
    raise AssertionError(f"{rel}: no row in input_cases.yaml says what it should give; add one")


def _check_error(err: ImageLoadError, rel: str, needle: str | None) -> None:
    message = str(err)
    assert "\n" not in message and "Traceback" not in message, message
    assert Path(rel).name in message, message
    if needle is not None:
        assert needle in message, message
    else:
        pytest.fail(f"{rel}: unexpected error: {message}")


def _check_load(rel: str, want: dict) -> None:
    try:
        image = load_image(SHARED / rel)
    except ImageLoadError as err:
        _check_error(err, rel, want.get("error"))
        return
    assert "error" not in want, f"{rel}: loaded, but the table expects an error"
    assert image.mode == want.get("mode", image.mode) and image.im is not None
    if "size" in want:
        assert list(image.size) == want["size"]
    if want.get("nonblack"):
        assert np.asarray(image).max() > 0, f"{rel}: decoded to a black image"
    if "equals" in want:
        assert np.array_equal(np.asarray(image), np.asarray(load_image(SHARED / want["equals"]))), rel
    if "gray_equals" in want:
        reference = to_gray(load_image(SHARED / want["gray_equals"]))
        assert np.array_equal(np.asarray(to_gray(image)), np.asarray(reference)), rel


def _check_frames(rel: str, want: dict) -> None:
    try:
        reader = open_frames(SHARED / rel)
        frames = list(reader)
    except ImageLoadError as err:
        _check_error(err, rel, want.get("error"))
        return
    assert "error" not in want, f"{rel}: read, but the table expects an error"
    assert len(frames) == want.get("decoded", len(frames))
    assert all(f.time_s >= 0 for f in frames) and [f.index for f in frames] == sorted(f.index for f in frames)
    if "skipped" in want:
        assert [e.frame for e in reader.skipped] == want["skipped"]
    for err in reader.skipped:
        _check_error(err, rel, "frame")
    for key in ("fps", "fps_source"):
        if key in want:
            assert reader.info[key] == want[key], (key, reader.info[key])
    if "warning" in want:
        assert any(want["warning"] in w and Path(rel).name in w for w in reader.info["warnings"]), reader.info


@pytest.mark.skipif(not (SHARED / "cases" / "README.md").is_file(), reason="../shared is not present")
@pytest.mark.parametrize("rel", _files() if (SHARED / "cases").is_dir() else [])
def test_input_conformance(rel: str) -> None:
    row = _row(rel)
    if "table" in row:
        table = read_table(SHARED / rel)
        assert len(table) == row["table"].get("rows", len(table)) and table.columns
    if "load" in row:
        _check_load(rel, row["load"])
    if "frames" in row:
        _check_frames(rel, row["frames"])
    assert {"table", "load", "frames"} & set(row), rel
