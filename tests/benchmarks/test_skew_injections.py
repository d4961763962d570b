"""benchmarks/skew_injections.py's table stays true to today's source: every row's ``old`` text
occurs exactly once in its file (a refactor that removes a target breaks this test, not silently
the harness), names are unique, selections exist. Nothing is injected or run here."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import skew_injections as si  # noqa: E402


def test_every_row_targets_text_that_occurs_exactly_once() -> None:
    for inj in si.INJECTIONS:
        text = si.source_path(inj).read_text()
        assert text.count(inj.old) == 1, f"{inj.name}: {inj.file} holds its old text {text.count(inj.old)} times"
        assert inj.old != inj.new, inj.name
    assert si.problems() == []


def test_names_are_unique_and_the_table_has_the_fifteen_rows() -> None:
    names = [i.name for i in si.INJECTIONS]
    assert len(names) == len(set(names)) == 15


def test_every_selection_holds_the_skew_tests_and_exists() -> None:
    for inj in si.INJECTIONS:
        assert inj.selection[0] == si.SKEW, inj.name
        assert all((REPO / s).exists() for s in inj.selection), inj.name


def test_a_stale_row_is_reported_not_silently_injected(tmp_path: Path) -> None:
    stale = replace(si.INJECTIONS[0], old="this text is in no file\n")
    doubled = replace(si.INJECTIONS[1], name=si.INJECTIONS[0].name)
    found = si.problems((stale, doubled))
    assert any("occurs 0 times" in p for p in found)
    assert any("duplicate name" in p for p in found)
    target = tmp_path / si.PACKAGE / stale.file
    target.parent.mkdir(parents=True)
    target.write_text("nothing to replace\n")
    with pytest.raises(ValueError, match="occurs 0 times"):
        si.inject(tmp_path, stale)


def test_pytest_outcomes_are_told_apart() -> None:
    """A failing test is a catch; a collection (import) error is not; all passing is a miss."""
    failed = "F\n=== short test summary info ===\nFAILED tests/test_skew.py::test_x - AssertionError: 1 != 2\n"
    assert si.classify(1, failed) == ("caught", "tests/test_skew.py::test_x", "AssertionError: 1 != 2")
    spaced = "FAILED tests/serve/test_api.py::test_u[16-bit grey] - assert 0.5 == 0.4\n"
    assert si.classify(1, spaced)[1:] == ("tests/serve/test_api.py::test_u[16-bit grey]", "assert 0.5 == 0.4")
    setup = "E\nERROR tests/test_skew.py::test_y - RuntimeError: boom\n"
    assert si.classify(1, setup)[0] == "caught (set-up error)"
    collect = "ERROR tests/test_skew.py - ImportError: cannot import name 'x'\n!!! Interrupted: 1 error during collection"
    assert si.classify(2, collect)[:2] == ("collection error", "tests/test_skew.py")
    assert si.classify(0, "7 passed in 3.0s")[0] == "missed"
    assert si.classify(None, "")[0] == "timeout"
