"""The one Predictor interface: .ckpt and .onnx answer alike, through every command that predicts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fetalplanes.runtime import FileResult, ModelFileError, available_kinds, detect_kind, load_predictor, read_spec


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "fetalplanes", *args], capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_kinds_are_detected_by_content_not_suffix(tiny_checkpoint: Path, onnx_model: Path, tmp_path: Path):
    assert detect_kind(tiny_checkpoint) == "checkpoint" and detect_kind(onnx_model) == "onnx"
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(onnx_model.read_bytes())
    assert detect_kind(renamed) == "onnx"
    assert read_spec(renamed) == read_spec(tiny_checkpoint)


def test_checkpoint_and_onnx_give_the_same_probabilities(tiny_checkpoint: Path, onnx_model: Path, synth_data: Path):
    files = sorted((synth_data / "Images").glob("*.png"))[:6]
    ckpt, onnx = load_predictor(tiny_checkpoint), load_predictor(onnx_model)
    assert (ckpt.kind, onnx.kind) == ("checkpoint", "onnx")
    assert ckpt.spec == onnx.spec
    a, b = ckpt.probabilities(ckpt.logits(files)), onnx.probabilities(onnx.logits(files))
    assert a.shape == (6, ckpt.spec.num_classes) and a.dtype == np.float64
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_predict_takes_a_path_bytes_or_a_list(onnx_model: Path, synth_data: Path):
    p = load_predictor(onnx_model)
    f = sorted((synth_data / "Images").glob("*.png"))[0]
    one = p.predict(str(f))
    assert one.label in p.class_names and len(one.topk) == 2
    assert p.predict(f.read_bytes()).probabilities == pytest.approx(one.probabilities)
    many = p.predict([f, f], k=3)
    assert len(many) == 2 and len(many[1].topk) == 3


def test_predict_batch_keeps_good_answers_beside_a_bad_file(onnx_model: Path, synth_data: Path, tmp_path: Path):
    good = sorted((synth_data / "Images").glob("*.png"))[:3]
    bad = tmp_path / "broken.png"
    bad.write_bytes(good[0].read_bytes()[:100])
    results = load_predictor(onnx_model).predict_batch([good[0], bad, *good[1:]], batch_size=2)
    assert [r.path for r in results] == [good[0], bad, *good[1:]]
    assert [r.ok for r in results] == [True, False, True, True]
    assert isinstance(results[1], FileResult) and "broken.png" in results[1].error
    # A path that does not exist is one bad row too, not the end of the batch.
    results = load_predictor(onnx_model).predict_batch([tmp_path / "nosuch.png", good[0]])
    assert [r.ok for r in results] == [False, True] and "nosuch.png" in results[0].error


@pytest.mark.parametrize("content, needle", [(b"", "empty file"), (b"hello world", "unknown model file type")])
def test_unreadable_model_files_name_the_accepted_formats(tmp_path: Path, content: bytes, needle: str):
    path = tmp_path / "model.xyz"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=rf"model.xyz: {needle}.*\.ckpt.*\.onnx"):
        load_predictor(path)


def test_checkpoint_without_torch_says_what_to_install(tiny_checkpoint: Path, onnx_model: Path):
    code = (
        "import sys, importlib.util\n"
        "_fs = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'torch' else _fs(name, *a)\n"
        "sys.modules['torch'] = None\n"
        "from fetalplanes.runtime import load_predictor, available_kinds, ModelFileError\n"
        "assert available_kinds() == ['onnx'], available_kinds()\n"
        f"assert load_predictor({str(onnx_model)!r}).kind == 'onnx'\n"
        "try:\n"
        f"    load_predictor({str(tiny_checkpoint)!r})\n"
        "except ModelFileError as e:\n"
        "    print(e)\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "needs torch" in proc.stdout and "fetalplanes[train]" in proc.stdout
    assert "checkpoint" in available_kinds()


@pytest.mark.slow
def test_evaluate_and_predict_cli_take_onnx_like_a_checkpoint(tiny_checkpoint: Path, onnx_model: Path,
                                                              synth_data: Path, tmp_path: Path):
    metrics = {}
    for name, model in (("ckpt", tiny_checkpoint), ("onnx", onnx_model)):
        out = tmp_path / name
        _cli("evaluate", "--model", str(model), "--data", str(synth_data), "--out", str(out), "--n-boot", "50")
        metrics[name] = json.loads((out / "metrics.json").read_text())
        assert (out / "report.md").is_file() and (out / "confusion_matrix.png").is_file()
    a, b = metrics["ckpt"], metrics["onnx"]
    assert b["model_kind"] == "onnx" and a["model_kind"] == "checkpoint"
    assert set(a) == set(b) and a["n"] == b["n"] and a["top1"] == b["top1"] and a["confusion_matrix"] == b["confusion_matrix"]

    files = sorted((synth_data / "Images").glob("*.png"))[:2]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    proc = _cli("predict", "--model", str(onnx_model), "--format", "json", str(files[0]), str(bad), str(files[1]), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    rows = json.loads(proc.stdout)
    assert [("error" in r) for r in rows] == [False, True, False] and "bad.png" in rows[1]["error"]
    proc = _cli("predict", "--model", str(onnx_model), "--format", "csv", str(bad), str(files[0]), check=False)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 1 and lines[0].startswith("image,label,confidence") and lines[0].endswith(",error")
    assert len(lines) == 3 and "bad.png" in lines[1] and lines[2].split(",")[1] in load_predictor(onnx_model).class_names
