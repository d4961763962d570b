"""Train/serve skew: every path that answers must see and score an image as training did.

Issue 22 injected 15 skews one at a time; four passed the whole suite (stream dropped the
temperature; evaluate's confidences dropped it; stream resized with NEAREST; RGB-to-grey used
the green channel) and two were caught only by chance (bicubic resize at inference only; T fit
on the test split). Each test here fails for one of those kinds (docs/metrics.md lists them).
A temperature far from 1 is set on purpose: with T = 1 a path that forgets it cannot be told apart.
``benchmarks/skew_injections.py`` re-injects 15 such skews and counts which the tests catch; the
flat-metadata test (a spec whose mean and std differ), the training-mode hand-over and the fitted
T recomputed from the validation logits were added after its first run missed or only just caught them.
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
from fetalplanes.core.spec import Preprocessing
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


def test_onnx_flat_metadata_is_the_spec(hot_models, tmp_path: Path) -> None:
    """The flat keys other tools read (``mean``, ``std``, ``image_size`` ...) say what the spec
    says, each checked against the spec's own field, on a spec whose mean and std differ from each
    other and per channel (Lite0's mean = std = 0.5 would hide a key holding the other)."""
    path = tmp_path / "model.onnx"
    shutil.copy(hot_models["onnx"], path)
    size = read_spec(path).preprocessing.image_size
    update_spec(path, preprocessing=Preprocessing(image_size=size, mean=(0.45, 0.5, 0.55), std=(0.2, 0.25, 0.3)))
    meta, spec = onnx_metadata(path), read_spec(path)
    pre = spec.preprocessing
    assert pre.mean == (0.45, 0.5, 0.55) and pre.std == (0.2, 0.25, 0.3)
    assert json.loads(meta["mean"]) == list(pre.mean) and json.loads(meta["std"]) == list(pre.std)
    assert int(meta["image_size"]) == pre.image_size and int(meta["channels"]) == pre.channels
    assert json.loads(meta["class_names"]) == list(spec.class_names)
    assert (meta["task"], meta["name"]) == (spec.task, spec.name)
    # A tool normalising by the flat keys feeds the model what the runtime feeds it.
    image = load_image(_non_square(tmp_path / "wide.png"))
    grey = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    mean, std = (np.asarray(json.loads(meta[k]), dtype=np.float32)[:, None, None] for k in ("mean", "std"))
    np.testing.assert_allclose((grey[None] - mean) / std, preprocess(image, pre), atol=1e-5)
    for key, value in spec_to_metadata(spec).items():
        assert meta.get(key) == value, key


def test_a_model_handed_over_in_training_mode_answers_as_its_file(hot_models, synth_data: Path) -> None:
    """``TorchPredictor.from_model`` (a model in memory, e.g. right after training, which leaves it
    in training mode) answers exactly as the checkpoint file: dropout off, BatchNorm's running statistics."""
    from fetalplanes.models.checkpoint import load_model
    from fetalplanes.models.torch_backend import TorchPredictor

    files = sorted((synth_data / "Images").glob("*.png"))[:6]
    model, spec = load_model(hot_models["ckpt"])
    from_memory = TorchPredictor.from_model(model.train(), spec)
    want = [r.prediction.probabilities for r in load_predictor(hot_models["ckpt"]).predict(files)]
    got = [r.prediction.probabilities for r in from_memory.predict(files)]
    assert len(got) == len(want) == 6
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-5)


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
    from fetalplanes.data.sources import load_source
    from fetalplanes.data.splits import choose_split
    from fetalplanes.evaluation.calibration import calibrate_logits, calibrate_on_data
    from fetalplanes.evaluation.predict import sample_logits

    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, ckpt)
    result = calibrate_on_data(ckpt, synth_data, tmp_path / "cal")
    # T is fit on the recorded validation images' own logits (not the test split's, whatever its
    # size): the fit's data (its T-free NLL at T = 1) and its result are recomputed from them. The
    # tiny model's T sits near the search bound (T_BOUNDS), so T alone would tell the splits apart weakly.
    spec = read_spec(ckpt)
    val = choose_split(load_source(synth_data, spec.task, spec.class_names), spec, "val").samples
    logits = sample_logits(load_predictor(ckpt), val)
    fit = calibrate_logits(logits, np.array([s.label for s in val]))
    assert result["val"]["nll_before"] == pytest.approx(fit["val"]["nll_before"], rel=1e-6)
    assert result["temperature"] == pytest.approx(fit["temperature"], rel=1e-6)
    assert result["abstain_threshold"] == pytest.approx(fit["abstain_threshold"], abs=1e-9)
    record = ImageRecord.from_training(read_spec(ckpt).training)
    assert result["selection"]["val"]["split"] == "val"
    assert result["val"]["n"] == record.n("val") == result["selection"]["val"]["n_scored"]
    assert result["selection"]["val"]["seen_train"] == 0  # no training image in the calibration set
