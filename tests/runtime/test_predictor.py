"""The one Predictor: .ckpt and .onnx answer alike, through every command that predicts; three public
methods (predict, logits, describe), per-item errors, no process-wide side effects."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fetalplanes.core.postprocess import softmax
from fetalplanes.core.preprocess import preprocess_batch
from fetalplanes.core.io import load_image
from fetalplanes.runtime import (FileResult, ModelFileError, Predictor, available_kinds, detect_kind, load_predictor,
                                 read_spec)


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
    x = preprocess_batch([load_image(f) for f in files], ckpt.spec.preprocessing)
    a, b = softmax(ckpt.logits(x), ckpt.spec.temperature), softmax(onnx.logits(x), onnx.spec.temperature)
    assert a.shape == (6, ckpt.spec.num_classes) and a.dtype == np.float64
    np.testing.assert_allclose(a, b, atol=1e-4)
    # ... and through predict, files in, answers out.
    ra, rb = ckpt.predict(files), onnx.predict(files)
    assert [r.prediction.label for r in ra] == [r.prediction.label for r in rb]
    np.testing.assert_allclose(np.stack([r.logits for r in ra]), ckpt.logits(x), atol=1e-5)


def test_predict_takes_a_path_bytes_an_image_an_array_or_a_list(onnx_model: Path, synth_data: Path):
    p = load_predictor(onnx_model)
    f = sorted((synth_data / "Images").glob("*.png"))[0]
    [one] = p.predict(str(f))
    assert one.ok and one.index == 0 and one.path == f and one.name == str(f)
    assert one.prediction.label in p.class_names and len(one.prediction.topk) == 2
    image = load_image(f)
    for same in (f.read_bytes(), image, np.asarray(image.convert("L"))):
        [r] = p.predict(same)
        assert r.path is None and r.name == "<input 0>"
        assert r.prediction.probabilities == pytest.approx(one.prediction.probabilities, abs=1e-6)
    many = p.predict([f, f.read_bytes()], k=3)
    assert [r.index for r in many] == [0, 1] and len(many[1].prediction.topk) == 3


def test_predict_keeps_good_answers_beside_a_bad_input(onnx_model: Path, synth_data: Path, tmp_path: Path):
    good = sorted((synth_data / "Images").glob("*.png"))[:3]
    bad = tmp_path / "broken.png"
    bad.write_bytes(good[0].read_bytes()[:100])
    results = load_predictor(onnx_model).predict([good[0], bad, *good[1:]], batch_size=2)
    assert [r.path for r in results] == [good[0], bad, *good[1:]]
    assert [r.ok for r in results] == [True, False, True, True]
    assert isinstance(results[1], FileResult) and "broken.png" in results[1].error and results[1].logits is None
    # A path that does not exist, junk bytes and a float array are one bad row each, not the end of the batch.
    junk = np.zeros((8, 8), np.float32)
    results = load_predictor(onnx_model).predict([tmp_path / "nosuch.png", good[0], b"not an image", junk])
    assert [r.ok for r in results] == [False, True, False, False]
    assert "nosuch.png" in results[0].error and results[2].error.startswith("<input 2>: not an image")
    assert "float32" in results[3].error and "Predictor.logits" in results[3].error
    assert all("\n" not in r.error for r in results if not r.ok)


def test_logits_checks_the_batch_shape_once(onnx_model: Path, monkeypatch: pytest.MonkeyPatch, synth_data: Path):
    p = load_predictor(onnx_model)
    s = p.input_size
    with pytest.raises(ValueError, match=rf"\(N, 3, {s}, {s}\)"):
        p.logits(np.zeros((1, 3, s + 1, s), np.float32))
    assert p.logits(np.zeros((0, 3, s, s), np.float32)).shape == (0, p.spec.num_classes)
    calls = []
    real = type(p)._checked  # the one shape check, before each model call (logits or logits + OOD features)
    monkeypatch.setattr(type(p), "_checked", lambda self, x: calls.append(len(x)) or real(self, x))
    files = sorted((synth_data / "Images").glob("*.png"))[:5]
    assert all(r.ok for r in p.predict(files, batch_size=2))
    assert calls == [2, 2, 1]  # one checked model call per batch


def test_predictor_is_the_base_class_and_cannot_answer_without_a_backend(onnx_model: Path):
    p = load_predictor(onnx_model)
    assert isinstance(p, Predictor) and type(p) is not Predictor
    assert {"path", "kind", "class_names", "image_size", "temperature"} <= set(p.describe())
    bare = Predictor(onnx_model, p.spec, p.metadata.get("fetalplanes_ood_stats"))
    with pytest.raises(NotImplementedError, match="_run"):
        bare.logits(np.zeros((1, 3, p.input_size, p.input_size), np.float32))
    with pytest.raises(NotImplementedError, match="OOD features"):
        bare.logits_and_ood(np.zeros((1, 3, p.input_size, p.input_size), np.float32))


def test_torch_threads_apply_only_to_the_predictors_own_calls(tiny_checkpoint: Path):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    want = 2 if before != 2 else 1
    p = load_predictor(tiny_checkpoint, threads=want)
    seen = []
    hook = p.model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    try:
        p.logits(np.zeros((1, 3, p.input_size, p.input_size), np.float32))
    finally:
        hook.remove()
    assert seen == [want] and torch.get_num_threads() == before and p.describe()["threads"] == want


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
    # nearest_plane (an OOD answer's closest class) was appended after error, so columns read by position keep theirs
    assert proc.returncode == 1 and lines[0].startswith("image,label,confidence") and lines[0].endswith(",error,nearest_plane")
    rows = list(csv.DictReader(lines))
    assert len(rows) == 2 and "bad.png" in rows[0]["error"] and not rows[0]["label"] and not rows[1]["error"]
    assert (rows[1]["label"] or rows[1]["nearest_plane"]) in load_predictor(onnx_model).class_names
