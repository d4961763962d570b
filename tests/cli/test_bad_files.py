"""`scan` and `evaluate` list ALL unreadable files at once (one line each, file and reason) and stop,
or with --skip-bad go on and say which files were left out (tiny synthetic class folders)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest




@pytest.fixture()
def folder_with_bad_files(synth_data: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    """Class folders with 3 good phantoms each and two unreadable files in different classes."""
    images = sorted((synth_data / "Images").glob("*.png"))
    root = tmp_path / "set"
    for cls, chunk in (("Fetal brain", images[:3]), ("Other", images[3:6])):
        (root / cls).mkdir(parents=True)
        for p in chunk:
            shutil.copy(p, root / cls / p.name)
    truncated, empty = root / "Fetal brain" / "cut.png", root / "Other" / "empty.png"
    truncated.write_bytes(images[0].read_bytes()[:120])
    empty.write_bytes(b"")
    return root, [truncated, empty]


def _listed(stderr: str, files: list[Path]) -> list[str]:
    """The stderr lines that name one of ``files``, in order."""
    return [line for line in stderr.splitlines() if any(str(f) in line for f in files)]


def test_scan_lists_all_bad_files_or_skips_them(cli_run, folder_with_bad_files) -> None:
    root, bad = folder_with_bad_files
    proc = cli_run("scan", str(root))
    assert proc.returncode == 2 and "2 image file(s) cannot be loaded" in proc.stderr and "--skip-bad" in proc.stderr
    lines = _listed(proc.stderr, bad)
    assert len(lines) == 2 and "corrupt or truncated PNG" in lines[0] and "empty file" in lines[1]
    proc = cli_run("scan", str(root), "--skip-bad")
    assert proc.returncode == 0 and "6 images" in proc.stdout and "2 unreadable left out" in proc.stdout
    assert len(_listed(proc.stderr, bad)) == 2


def test_evaluate_stops_with_the_list_or_reports_what_it_skipped(cli_run, folder_with_bad_files, onnx_model: Path,
                                                                 tmp_path: Path) -> None:
    root, bad = folder_with_bad_files
    out = tmp_path / "eval"
    # The phantoms are the model's own training data: --split test would refuse them (data.splits).
    proc = cli_run("evaluate", "--model", str(onnx_model), "--data", str(root), "--out", str(out), "--n-boot", "20",
                "--split", "all")
    assert proc.returncode == 2 and len(_listed(proc.stderr, bad)) == 2, proc.stderr
    assert not (out / "metrics.json").exists()  # nothing half-written
    # A class-folder set has no patient ids: image-level intervals must be asked for.
    proc = cli_run("evaluate", "--model", str(onnx_model), "--data", str(root), "--out", str(out), "--n-boot", "20",
                "--skip-bad", "--unit", "image", "--split", "all")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 6 and m["n_skipped"] == 2
    # The selection speaks of the images actually scored, not of those it picked before the skip.
    assert m["selection"]["n_scored"] == 6 and f"of the 6 scored images" in m["selection"]["statement"]
    assert [s["image"] for s in m["skipped"]] == [str(p) for p in bad]
    assert "truncated" in m["skipped"][0]["error"] and "empty file" in m["skipped"][1]["error"]
    report = (out / "report.md").read_text()
    assert "2 of 8 image file(s) could not be read and were left out" in report
    assert all(f"`{p}`" in report for p in bad)
    assert "2 unreadable image(s) left out" in proc.stderr


def test_patient_bootstrap_without_patient_ids_names_a_file(cli_run, folder_with_bad_files, onnx_model: Path,
                                                            tmp_path: Path) -> None:
    """Class folders carry no patient ids: the one-line error names the data and an image, not a row number."""
    root, bad = folder_with_bad_files
    for p in bad:
        p.unlink()
    out = tmp_path / "eval"
    proc = cli_run("evaluate", "--model", str(onnx_model), "--data", str(root), "--out", str(out), "--n-boot", "20",
                   "--split", "all")
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = next(ln for ln in proc.stderr.splitlines() if "no patient id" in ln)
    assert "6 of 6 image(s) have no patient id (first: " in line and str(root) in line and ".png" in line
    assert "--unit image" in line and "Traceback" not in proc.stderr
    assert not (out / "metrics.json").exists()
