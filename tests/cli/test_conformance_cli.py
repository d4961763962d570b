"""Conformance through the commands and the service: every file in ../shared/cases and
../shared/data/{dicom_us,video_us} through `fetalplanes predict --format json`, `scan`, `stream`
(multi-frame and video), `evaluate` (the external CSV layout) and `/v1/predict`.

For each file: a prediction, or one line naming the file and what was expected; never a
traceback; and the values of ../shared/cases/README.md (twins answered identically, the bad cine
frame named by index with the others kept, timing warnings, the bomb refused, the African layout
read with patients as (Center, Patient_num)). What each file should give is the input layer's one
table, tests/core/input_cases.yaml. The model is the shared tiny ONNX export (synthetic phantoms:
its answers mean nothing clinically; only their consistency is tested). CLI calls are batched:
one `predict` over every file.
"""

from __future__ import annotations

import csv
import fnmatch
import json
from pathlib import Path

import pytest
import yaml

from fetalplanes.core.formats import IMAGE_SUFFIXES, VIDEO_SUFFIXES

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
FOLDERS = ("cases", "data/dicom_us", "data/video_us")
TABLE = yaml.safe_load((REPO / "tests" / "core" / "input_cases.yaml").read_text())

pytestmark = pytest.mark.skipif(not (SHARED / "cases" / "README.md").is_file(), reason="../shared/cases is not present")


def _files() -> list[str]:
    found = [SHARED / "cases" / "README.md"]
    for folder in FOLDERS:
        found += [p for p in (SHARED / folder).rglob("*") if p.is_file()]
    return sorted({p.relative_to(SHARED).as_posix() for p in found})


FILES = _files() if (SHARED / "cases").is_dir() else []


def expect(rel: str) -> dict:
    """What the commands must give for ``rel``, from its input_cases.yaml row.

    kind: 'image' (one prediction), 'frames' (one per good frame; ``good``/``skipped`` indices),
    'video' (predict refuses it and points to `stream`), 'error' (one line containing ``needle``).
    """
    row = next((r for r in TABLE if fnmatch.fnmatch(rel, r["files"])), None)
    assert row is not None, f"{rel}: no row in input_cases.yaml says what it should give"
    load, frames = row.get("load"), row.get("frames") or {}
    if load is None:  # label tables
        return {"kind": "error", "needle": "not an image"}
    if "error" in load and (frames.get("decoded") or Path(rel).suffix.lower() in VIDEO_SUFFIXES):
        # predict points every video to `stream`; ``refused``: stream itself refuses it in one line
        return {"kind": "video", "decoded": frames.get("decoded"), "refused": frames.get("error")}
    if "error" in load:
        return {"kind": "error", "needle": load["error"]}
    skipped = frames.get("skipped", [])
    total = frames.get("decoded", 1) + len(skipped)
    if total > 1:
        return {"kind": "frames", "good": [i for i in range(total) if i not in skipped], "skipped": skipped,
                "warning": frames.get("warning"), "equals": load.get("equals")}
    return {"kind": "image", "equals": load.get("equals") or load.get("gray_equals")}




def _one_line(message: str, rel: str, needle: str | None = None) -> None:
    assert "\n" not in message and Path(rel).name in message, message
    if needle:
        assert needle in message, message


# ------------------------------------------------------------------ predict: one call over every file


@pytest.fixture(scope="module")
def predicted(cli_run, onnx_model: Path) -> tuple[dict[str, list[dict]], str]:
    """{relative file: its JSON rows in order} and stderr of one `predict --format json` call."""
    proc = cli_run("predict", "--model", str(onnx_model), "--format", "json", *[str(SHARED / f) for f in FILES])
    assert proc.returncode == 1, proc.stderr[-3000:]  # the bomb, the texts and the bad frame fail
    rows: dict[str, list[dict]] = {}
    for row in json.loads(proc.stdout):
        rows.setdefault(Path(row["file"]).relative_to(SHARED).as_posix(), []).append(row)
    return rows, proc.stderr


def _probs(rows: dict[str, list[dict]], rel: str, frame: int | None = None) -> dict[str, float]:
    return next(r for r in rows[rel] if r["frame"] == frame)["probabilities"]


@pytest.mark.parametrize("rel", FILES)
def test_predict_answers_each_file_or_names_it_in_one_line(predicted, rel: str) -> None:
    rows, _ = predicted
    want, got = expect(rel), rows.get(rel)
    assert got, f"{rel}: no row in predict's output"
    for row in got:
        if "error" in row:
            _one_line(row["error"], rel)
    if want["kind"] == "image":
        assert len(got) == 1 and got[0]["frame"] is None and "error" not in got[0], got
        assert got[0]["image"] == str(SHARED / rel) and (got[0]["label"] or got[0]["nearest_plane"]) in got[0]["probabilities"]
    elif want["kind"] == "error":
        assert len(got) == 1 and "label" not in got[0], got
        _one_line(got[0]["error"], rel, want["needle"])
    elif want["kind"] == "video":
        assert len(got) == 1 and "stream" in got[0]["error"], got
    else:  # per frame: the good ones answered, each bad one named by index
        assert [r["frame"] for r in got] == sorted(want["good"] + want["skipped"])
        assert [r["frame"] for r in got if "error" not in r] == want["good"]
        for r in got:
            assert r["image"] == f"{SHARED / rel}#frame={r['frame']}"
            if r["frame"] in want["skipped"]:
                _one_line(r["error"], rel, f"frame {r['frame']}")
            else:
                assert r["time_s"] >= 0 and "label" in r


def test_predict_twins_get_identical_probabilities(predicted) -> None:
    """bit_depth, dicom_palette and the DICOM re-encodings: same pixels, so the same answer."""
    rows, _ = predicted
    pairs = [(rel, expect(rel).get("equals")) for rel in FILES if expect(rel).get("equals")]
    assert len(pairs) >= 8, pairs  # 2 bit-depth twins, 4 palettes, J2K, RLE, 2-frame
    for rel, twin in pairs:
        frame = 0 if expect(rel)["kind"] == "frames" else None
        assert _probs(rows, rel, frame) == _probs(rows, twin), (rel, twin)
    # Brightness is never stretched per image: the darker scan is a different input.
    assert _probs(rows, "cases/bit_depth/c09_dark_8bit.png") != _probs(rows, "cases/bit_depth/c09_8bit.png")


def test_predict_cine_cases(predicted) -> None:
    rows, stderr = predicted
    bad, ok = "cases/cine_bad_frame/c05_cine_badframe.dcm", "cases/cine_bad_frame/c05_cine_ok.dcm"
    for frame in (0, 1, 2, 4, 5):  # the good frames of the damaged loop are its intact twin's frames
        assert _probs(rows, bad, frame) == _probs(rows, ok, frame)
    lines = stderr.splitlines()
    assert any("c05_cine_badframe.dcm: 1 of 6 frame(s) skipped (frame 3)" in line for line in lines), stderr
    assert "1 frame(s) of 1 multi-frame file(s) skipped" in stderr
    for rel in (f for f in FILES if f.startswith("cases/cine_frame_time/")):
        assert any(Path(rel).name in line and "FrameTime" in line for line in lines), (rel, stderr)
        assert [r["time_s"] for r in rows[rel]] == sorted(r["time_s"] for r in rows[rel]) and rows[rel][0]["time_s"] == 0


# ------------------------------------------------------------------ the service


@pytest.fixture(scope="module")
def client(onnx_model: Path):
    from fastapi.testclient import TestClient

    from fetalplanes.serve.app import create_app

    return TestClient(create_app(onnx_model))


@pytest.fixture(scope="module")
def served(client) -> dict[str, object]:
    """{relative file: (status, body)} for every file posted to /v1/predict."""
    out = {}
    for rel in FILES:
        data = (SHARED / rel).read_bytes()
        response = client.post("/v1/predict", files={"file": (Path(rel).name, data, "application/octet-stream")})
        out[rel] = (response.status_code, response.json())
    return out


@pytest.mark.parametrize("rel", FILES)
def test_service_answers_each_file_or_names_it_in_one_line(served, predicted, rel: str) -> None:
    status, body = served[rel]
    want, (rows, _) = expect(rel), predicted
    if want["kind"] in ("image", "frames"):
        assert status == 200, body
        # The service answers every frame of a cine and says which one its top-level answer is for.
        frame = body["cine"]["answered_frame"] if want["kind"] == "frames" else None
        assert body["probabilities"] == pytest.approx(_probs(rows, rel, frame), abs=1e-6)  # as the CLI
        return
    assert status in (415, 422), body
    _one_line(body["detail"], rel, want.get("needle") if status == 422 else None)


def _first_frame(body: dict) -> tuple[str, float]:
    """(plane, confidence) of a still's answer, or of frame 0 of a cine's answers."""
    if body.get("cine"):
        f0 = next(f for f in body["cine"]["frames"] if f["frame"] == 0)
        return f0["plane"] or f0["nearest_plane"], f0["confidence"]
    return body["plane"] or body["nearest_plane"], body["confidence"]  # a rejected input names only the nearest


def test_service_twins_get_identical_probabilities(served) -> None:
    for rel in FILES:
        twin = expect(rel).get("equals")
        if twin:
            (plane, conf), (twin_plane, twin_conf) = _first_frame(served[rel][1]), _first_frame(served[twin][1])
            # a cine's frames go to the model in one batch: the same answer to float32 rounding
            assert plane == twin_plane and conf == pytest.approx(twin_conf, abs=1e-6), (rel, twin)
    status, body = served["cases/dicom_bomb/c21_small_header_big_jpeg.dcm"]
    assert status == 422 and "12000x12000" in body["detail"]


# ------------------------------------------------------------------ stream: multi-frame and video

STREAMED = [rel for rel in FILES if expect(rel)["kind"] in ("frames", "video")]


@pytest.mark.parametrize("rel", STREAMED)
def test_stream_keeps_good_frames_and_names_bad_ones(cli_run, onnx_model: Path, tmp_path: Path, rel: str) -> None:
    want = expect(rel)
    proc = cli_run("stream", str(SHARED / rel), "--model", str(onnx_model), "--out", str(tmp_path), "--no-save-best")
    if want.get("refused"):  # e.g. frames over the pixel limit: one line, nothing written
        assert proc.returncode != 0 and want["refused"] in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "frames.csv").exists()
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "frames.csv", newline="") as fh:
        frames = list(csv.DictReader(fh))
    times = [float(r["time_s"]) for r in frames]
    assert times == sorted(times) and times[0] == 0.0, times  # never negative, never backwards
    source = json.loads((tmp_path / "stream.json").read_text())["source"]
    lines = proc.stderr.splitlines()
    if want["kind"] == "video":
        assert len(frames) == want["decoded"] and source["frames_skipped"] == 0
        return
    assert [int(r["frame"]) for r in frames] == want["good"]
    assert source["frames_skipped"] == len(want["skipped"])
    for index in want["skipped"]:
        assert any(Path(rel).name in line and f"frame {index}:" in line for line in lines), proc.stderr
        assert any(f"{len(want['skipped'])} of {len(want['good']) + len(want['skipped'])} frame(s) skipped" in line
                   for line in lines), proc.stderr
    if want["warning"]:
        assert any(Path(rel).name in line and want["warning"] in line for line in lines), proc.stderr


# ------------------------------------------------------------------ scan


def test_scan_lists_every_bad_file_at_once_or_skips_them(cli_run, tmp_path: Path) -> None:
    """Every image file as one class folder (links): scan names the bad ones, one line each."""
    images = [rel for rel in FILES if Path(rel).suffix.lower() in IMAGE_SUFFIXES]
    folder = tmp_path / "set" / "Other"
    folder.mkdir(parents=True)
    for rel in images:
        (folder / rel.replace("/", "__")).symlink_to(SHARED / rel)
    bad = [rel for rel in images if expect(rel)["kind"] == "error"]
    assert bad == ["cases/dicom_bomb/c21_small_header_big_jpeg.dcm", "cases/dicom_deflate_bomb/deflate_bomb_1GiB.dcm"]
    proc = cli_run("scan", str(tmp_path / "set"))
    assert proc.returncode == 2 and f"{len(bad)} image file(s) cannot be loaded" in proc.stderr, proc.stderr
    named = [line for line in proc.stderr.splitlines() if "__" in line]
    assert [line.split(":")[0].strip() for line in named] == [str(folder / rel.replace("/", "__")) for rel in bad]
    assert "12000x12000" in named[0] and "(FFFC,FFFC)" in named[1]
    proc = cli_run("scan", str(tmp_path / "set"), "--skip-bad")
    assert proc.returncode == 0, proc.stderr
    assert f"{len(images) - len(bad)} images" in proc.stdout and f"{len(bad)} unreadable left out" in proc.stdout


def test_scan_reads_a_spreadsheet_csv_like_its_clean_twin(cli_run) -> None:
    from fetalplanes.data.sources import load_source

    root = SHARED / "cases" / "csv_blank_rows"
    outputs = [cli_run("scan", str(root / name)) for name in ("labels_control", "labels_excel")]
    assert all(p.returncode == 0 for p in outputs), [p.stderr for p in outputs]
    assert outputs[0].stdout == outputs[1].stdout and "12 images" in outputs[0].stdout
    a, b = (load_source(root / name) for name in ("labels_control", "labels_excel"))
    assert [(s.path.name, s.label, s.patient) for s in a.samples] == [(s.path.name, s.label, s.patient) for s in b.samples]


# ------------------------------------------------------------------ evaluate on the external layout


def test_evaluate_reads_the_african_layout_with_centres(cli_run, onnx_model: Path, tmp_path: Path) -> None:
    root = SHARED / "cases" / "external_csv_layout"
    proc = cli_run("evaluate", "--model", str(onnx_model), "--data", str(root), "--out", str(tmp_path), "--n-boot", "50")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    with open(root / "African_planes_database.csv", newline="", encoding="utf-8-sig") as fh:
        test_rows = [r for r in csv.DictReader(fh) if r["Train"].strip() == "0"]
    # A patient is (Center, Patient_num): the same number in two centres is two patients.
    patients = {(r["Center"], r["Patient_num"]) for r in test_rows}
    assert len(patients) > len({r["Patient_num"] for r in test_rows})
    assert m["n"] == len(test_rows) and m["ci95"]["unit"] == "patient" and m["ci95"]["n_units"] == len(patients)
    assert set(m["breakdown"]["Center"]) == {r["Center"] for r in test_rows}
    assert sum(v["n"] for v in m["breakdown"]["Center"].values()) == m["n"]
    absent = sorted(set(m["class_names"]) - {r["Plane"] for r in test_rows})
    assert m["classes_absent"] == absent and len(absent) == 2
    if "n_classes_present" in m:  # macro over the classes present (the metrics definitions)
        assert m["n_classes_present"] == len(m["class_names"]) - len(absent)
    report = (tmp_path / "report.md").read_text()
    assert "## By Center" in report and all(c in report for c in absent) and m["n_skipped"] == 0
