"""`fetalplanes stream`: video (H.264 via PyAV), frame folders and DICOM cine loops, tiny model."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fetalplanes.deploy.stream import Smoother, StreamConfig, open_frames, run_stream, slug, write_phantom_video

av = pytest.importorskip("av")

SIZE = 64  # model input: tiny, the pipeline is what is tested
N_FRAMES = 30
PLANE_ORDER = ("Fetal brain", "Fetal abdomen", "Maternal cervix")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fetalplanes-format ONNX model (pooled intensities -> linear layer) with its spec.

    Built with onnx.helper rather than exported from torch, so these tests stay fast and
    show that streaming needs no torch; the real model's export is tested with deploy.export.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from fetalplanes.core.classes import PLANES
    from fetalplanes.core.spec import ModelSpec, Preprocessing
    from fetalplanes.runtime.artifact import set_onnx_metadata
    from fetalplanes.runtime.onnx_backend import INPUT_NAME, OUTPUT_NAME

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(3, len(PLANES))).astype(np.float32) * 5, "w")
    bias = numpy_helper.from_array(rng.normal(size=len(PLANES)).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", [INPUT_NAME], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w", "b"], [OUTPUT_NAME])],
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", len(PLANES)])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    spec = ModelSpec("tiny", "planes", tuple(PLANES), {"backbone": "none"}, Preprocessing(image_size=SIZE))
    set_onnx_metadata(model, spec)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def phantom_frames() -> list[np.ndarray]:
    """Synthetic phantom frames (runs of three planes, as a sweep would show them)."""
    from fetalplanes.data.synth import render

    rng = np.random.default_rng(0)
    return [render(PLANE_ORDER[i * len(PLANE_ORDER) // N_FRAMES], rng, (160, 128))[0] for i in range(N_FRAMES)]


def write_cine(path: Path, frames: list[np.ndarray], frame_time_ms: float) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.Modality = "US"
    ds.set_pixel_data(np.stack(frames).astype(np.uint8), "MONOCHROME2", 8)
    ds.FrameTime = frame_time_ms
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())
    return path


def read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "frames.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def check_outputs(out: Path, summary: dict, n: int) -> list[dict[str, str]]:
    rows = read_rows(out)
    assert len(rows) == n == summary["frames"]
    assert [int(r["frame"]) for r in rows] == list(range(n))
    times = [float(r["time_s"]) for r in rows]
    assert all(b > a for a, b in zip(times, times[1:]))
    assert summary["fps"] > 0 and summary["model_fps"] >= summary["fps"] * 0.999
    assert summary["latency_ms_p95"] >= summary["latency_ms_p50"] > 0
    assert summary["best_frames"], "at least one plane must have a best frame"
    for label, best in summary["best_frames"].items():
        assert Path(best["path"]).is_file() and Path(best["path"]).name == f"{slug(label)}.png"
        with Image.open(best["path"]) as im:
            assert im.size == (160, 128)
        labelled = [float(r["smoothed_confidence"]) for r in rows if r["smoothed_label"] == label and r["state"] == "plane"]
        assert best["confidence"] == pytest.approx(max(labelled), abs=1e-4)
        assert rows[best["frame"]]["smoothed_label"] == label
    assert json.loads((out / "stream.json").read_text())["frames"] == n
    return rows


def test_video_file(tiny_onnx: Path, tmp_path: Path) -> None:
    video = write_phantom_video(tmp_path / "sweep.mp4", N_FRAMES, (160, 128), fps=15)
    summary = run_stream(StreamConfig(video, tiny_onnx, tmp_path / "out", batch=4))
    rows = check_outputs(tmp_path / "out", summary, N_FRAMES)
    assert summary["source"]["kind"] == "video" and summary["source"]["codec"] == "h264"
    assert float(rows[1]["time_s"]) == pytest.approx(1 / 15, abs=1e-3)


def test_frame_folder_sorted_by_name(tiny_onnx: Path, phantom_frames: list[np.ndarray], tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, arr in enumerate(phantom_frames[:12]):
        Image.fromarray(arr).save(folder / f"frame_{i:03d}.png")
    summary = run_stream(StreamConfig(folder, tiny_onnx, tmp_path / "out", batch=5, fps=10, smooth="window:3"))
    rows = check_outputs(tmp_path / "out", summary, 12)
    assert float(rows[3]["time_s"]) == pytest.approx(0.3)
    assert summary["smoothing"] == "window:3"


def test_dicom_cine_uses_frame_time(tiny_onnx: Path, phantom_frames: list[np.ndarray], tmp_path: Path) -> None:
    cine = write_cine(tmp_path / "cine.dcm", phantom_frames[:9], frame_time_ms=40.0)
    summary = run_stream(StreamConfig(cine, tiny_onnx, tmp_path / "out", batch=1, smooth="none"))
    rows = check_outputs(tmp_path / "out", summary, 9)
    assert float(rows[2]["time_s"]) == pytest.approx(0.08)
    # Without smoothing, the smoothed column is the raw one.
    assert all(r["raw_label"] == r["smoothed_label"] for r in rows)


def test_max_frames_stops_early(tiny_onnx: Path, tmp_path: Path) -> None:
    video = write_phantom_video(tmp_path / "sweep.mp4", N_FRAMES, (160, 128))
    summary = run_stream(StreamConfig(video, tiny_onnx, tmp_path / "out", max_frames=7, save_best=False))
    assert summary["frames"] == len(read_rows(tmp_path / "out")) == 7
    assert not (tmp_path / "out" / "best").exists()


def test_smoother_math() -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    ema = Smoother("ema:0.25")
    assert np.allclose(ema(a), a)
    assert np.allclose(ema(b), 0.25 * b + 0.75 * a)
    win = Smoother("window:2")
    win(a), win(b)
    assert np.allclose(win(b), b)  # the oldest frame has left the window
    assert np.allclose(Smoother("none")(b), b)
    for bad in ("ema:0", "ema:1.5", "window:0", "median:3", "ema:x"):
        with pytest.raises(ValueError, match="smooth"):
            Smoother(bad)


def test_bad_inputs_are_clear(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        open_frames(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no frame images"):
        open_frames(tmp_path / "empty")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="broken.mp4"):
        run_stream(StreamConfig(broken, tiny_onnx, tmp_path / "out"))


def test_stream_cli(tiny_onnx: Path, tmp_path: Path) -> None:
    video = write_phantom_video(tmp_path / "sweep.mp4", 10, (160, 128))
    out = tmp_path / "cli_out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fetalplanes.cli", "stream", str(video), "--model", str(tiny_onnx), "--out", str(out), "--batch", "2"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "fps" in proc.stdout
    assert len(read_rows(out)) == 10
    # The edge install has no torch: streaming must not need it.
    no_torch = (
        "import sys; sys.modules['torch'] = None; from fetalplanes.cli import main; "
        f"sys.argv = ['fetalplanes', 'stream', {str(video)!r}, '--model', {str(tiny_onnx)!r}, '--out', {str(out / 'nt')!r}]; main()"
    )
    proc = subprocess.run([sys.executable, "-c", no_torch], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(read_rows(out / "nt")) == 10
    bad = subprocess.run(
        [sys.executable, "-m", "fetalplanes.cli", "stream", str(video), "--model", str(tiny_onnx), "--smooth", "median"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert bad.returncode == 2 and "--smooth" in bad.stderr


def test_stream_says_why_there_is_no_best_frame(tiny_onnx: Path, tmp_path: Path) -> None:
    """Every frame below the abstain threshold: no best/ image, and the CLI says why."""
    import shutil

    from fetalplanes.runtime.artifact import update_spec

    model = Path(shutil.copy(tiny_onnx, tmp_path / "strict.onnx"))
    update_spec(model, abstain_threshold=1.0)  # no softmax reaches 1.0 on these frames
    video = write_phantom_video(tmp_path / "sweep.mp4", 4, (160, 128))
    proc = subprocess.run(
        [sys.executable, "-m", "fetalplanes.cli", "stream", str(video), "--model", str(model), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "no best frame: every frame was below the model's abstain threshold" in proc.stdout
    assert not list((tmp_path / "o").glob("best/*.png"))


def test_stream_keeps_good_frames_of_a_cine_with_a_bad_one(tiny_onnx: Path, tmp_path: Path, shared_cases: Path) -> None:
    """cases/cine_bad_frame: the five good frames are classified, frame 3 is reported, the run succeeds."""
    summary = run_stream(StreamConfig(shared_cases / "cine_bad_frame" / "c05_cine_badframe.dcm", tiny_onnx, tmp_path))
    assert [int(r["frame"]) for r in read_rows(tmp_path)] == [0, 1, 2, 4, 5]
    source = json.loads((tmp_path / "stream.json").read_text())["source"]
    assert summary["frames"] == 5 and source["frames_skipped"] == 1 and source["skipped"][0]["frame"] == 3


@pytest.mark.parametrize("variant", ["comma", "zero", "neg"])
def test_stream_invalid_frame_time_falls_back(tiny_onnx: Path, tmp_path: Path, shared_cases: Path, variant: str) -> None:
    path = shared_cases / "cine_frame_time" / f"c12_cine_frametime_{variant}.dcm"
    summary = run_stream(StreamConfig(path, tiny_onnx, tmp_path))
    times = [float(r["time_s"]) for r in read_rows(tmp_path)]
    assert times == [0.0, 0.04, 0.08] and summary["source"]["fps_source"] == "default"
    assert "FrameTime" in summary["source"]["warnings"][0]
