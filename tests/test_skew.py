"""Train/serve skew: every path that answers must see and score an image as training did.

Issue 22 injected 15 skews one at a time; four passed the whole suite (stream dropped the
temperature; evaluate's confidences dropped it; stream resized with NEAREST; RGB-to-grey used
the green channel) and two were caught only by chance (bicubic resize at inference only; T fit
on the test split). Each test here fails for one of those kinds (docs/metrics.md lists them).
A temperature far from 1 is set on purpose: with T = 1 a path that forgets it cannot be told apart.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fetalplanes.core.io import load_image
from fetalplanes.core.postprocess import softmax
from fetalplanes.core.preprocess import preprocess
from fetalplanes.runtime import load_predictor
from fetalplanes.runtime.artifact import onnx_metadata, read_spec, spec_to_metadata, update_spec

T = 3.0


@pytest.fixture(scope="module")
def hot_models(tiny_checkpoint: Path, onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny checkpoint and its ONNX export, both rewritten with temperature T."""
    root = tmp_path_factory.mktemp("hot")
    out = {"ckpt": root / "model.ckpt", "onnx": root / "model.onnx"}
    shutil.copy(tiny_checkpoint, out["ckpt"])
    shutil.copy(onnx_model, out["onnx"])
    for path in out.values():
        update_spec(path, temperature=T)
        assert read_spec(path).temperature == T
    return out


def _non_square(path: Path, rgb: bool = False) -> Path:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:61, 0:97]
    base = (128 + 90 * np.sin(x / 6.0) * np.cos(y / 9.0) + rng.normal(0, 8, (61, 97))).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(np.stack([base, base[::-1], np.roll(base, 13, 1)], -1) if rgb else base)
    img.save(path)
    return path


def _confidences(results) -> np.ndarray:
    return np.array([r.prediction.confidence for r in results])


def test_training_and_inference_prepare_a_non_square_image_identically(hot_models, tmp_path: Path) -> None:
    from fetalplanes.data.records import Sample
    from fetalplanes.data.torch_data import ImageDataset

    path = _non_square(tmp_path / "wide.png", rgb=True)
    predictor = load_predictor(hot_models["ckpt"])
    pre = predictor.spec.preprocessing
    trained = ImageDataset([Sample(path, 0)], pre, augment=None)[0][0].numpy()
    np.testing.assert_array_equal(trained, preprocess(load_image(path), pre))
    # ... and the Predictor answers exactly what the model says of the training tensor, with T.
    expected = softmax(predictor.logits(trained[None]), T).max()
    assert predictor.predict(path)[0].prediction.confidence == pytest.approx(float(expected), abs=1e-6)


def test_both_backends_apply_the_temperature(hot_models, synth_data: Path) -> None:
    files = sorted((synth_data / "Images").glob("*.png"))[:6] or sorted(synth_data.rglob("*.png"))[:6]
    x = np.stack([preprocess(load_image(f), read_spec(hot_models["ckpt"]).preprocessing) for f in files])
    for kind, path in hot_models.items():
        p = load_predictor(path)
        want = softmax(p.logits(x), T).max(axis=1)
        np.testing.assert_allclose(_confidences(p.predict(files)), want, atol=1e-6, err_msg=kind)
    ckpt, onnx = (_confidences(load_predictor(hot_models[k]).predict(files)) for k in ("ckpt", "onnx"))
    np.testing.assert_allclose(ckpt, onnx, atol=1e-4)
    assert not np.allclose(ckpt, softmax(load_predictor(hot_models["ckpt"]).logits(x), 1.0).max(axis=1), atol=1e-3)


def test_evaluate_reports_the_predictors_calibrated_confidences(hot_models, synth_data: Path, tmp_path: Path) -> None:
    from fetalplanes.evaluation.report import evaluate

    m = evaluate(hot_models["onnx"], synth_data, tmp_path / "eval", split="all", n_boot=10, unit="image")
    assert m["temperature"] == T
    with open(tmp_path / "eval" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:8]
    files = {p.name: p for p in synth_data.rglob("*.png")}
    got = load_predictor(hot_models["onnx"]).predict([files[r["image"]] for r in rows])
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], _confidences(got), atol=1e-4)


def test_stream_scores_frames_as_the_predictor_does(hot_models, tmp_path: Path) -> None:
    pytest.importorskip("av")
    from fetalplanes.deploy.stream import StreamConfig, open_frames, run_stream, write_phantom_video

    video = write_phantom_video(tmp_path / "clip.mp4", n_frames=6, size=(96, 80))
    run_stream(StreamConfig(video, hot_models["onnx"], tmp_path / "out", smooth="none", save_best=False))
    with open(tmp_path / "out" / "frames.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    frames, _ = open_frames(video)
    images = [fr.image for fr in frames]
    assert len(rows) == len(images) == 6
    want = _confidences(load_predictor(hot_models["onnx"]).predict(images))
    np.testing.assert_allclose([float(r["raw_confidence"]) for r in rows], want, atol=1e-4)


def test_onnx_flat_metadata_is_the_spec(hot_models) -> None:
    meta, spec = onnx_metadata(hot_models["onnx"]), read_spec(hot_models["onnx"])
    flat = {k: v for k, v in spec_to_metadata(spec).items()}
    for key, value in flat.items():
        assert meta.get(key) == value, key
    assert json.loads(meta["class_names"]) == list(spec.class_names)
    assert int(meta["image_size"]) == spec.preprocessing.image_size


def test_colour_input_becomes_its_itu_r_601_luma(hot_models, tmp_path: Path) -> None:
    """Colour frames (screen captures, colour DICOM) are reduced with the luma weights
    0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, Pillow's convert('L')), never one channel."""
    path = _non_square(tmp_path / "colour.png", rgb=True)
    rgb = np.asarray(Image.open(path), dtype=np.float64)
    luma = np.round(rgb @ np.array([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)
    pre = read_spec(hot_models["ckpt"]).preprocessing
    np.testing.assert_allclose(preprocess(load_image(path), pre), preprocess(Image.fromarray(luma), pre), atol=0.02)
    green = Image.fromarray(rgb[..., 1].astype(np.uint8))
    assert np.abs(preprocess(load_image(path), pre) - preprocess(green, pre)).max() > 0.1


def test_calibration_is_fit_on_the_validation_split_only(tiny_checkpoint: Path, synth_data: Path, tmp_path: Path) -> None:
    from fetalplanes.data.provenance import ImageRecord
    from fetalplanes.evaluation.calibration import calibrate_on_data

    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, ckpt)
    result = calibrate_on_data(ckpt, synth_data, tmp_path / "cal")
    record = ImageRecord.from_training(read_spec(ckpt).training)
    assert result["selection"]["val"]["split"] == "val"
    assert result["val"]["n"] == record.n("val") == result["selection"]["val"]["n_scored"]
    assert result["selection"]["val"]["seen_train"] == 0  # no training image in the calibration set
