"""The OOD gate as the workflow fits it (training split statistics, validation threshold) and as the
two model files carry it: the checkpoint and its ONNX export give the same features and scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fetalplanes.core import ood
from fetalplanes.core.io import load_image
from fetalplanes.core.preprocess import preprocess_batch
from fetalplanes.core.spec import ModelSpec
from fetalplanes.runtime.artifact import OOD_KEY, ModelFileError, ood_stats, read_spec


def _ckpt_stats(checkpoint: Path):
    from fetalplanes.models.checkpoint import ood_blob, read_checkpoint

    spec = read_spec(checkpoint)
    return spec, ood_stats(spec, ood_blob(read_checkpoint(checkpoint)), str(checkpoint))


def test_calibration_fits_the_gate_on_train_and_thresholds_on_val(tiny_checkpoint: Path) -> None:
    spec, stats = _ckpt_stats(tiny_checkpoint)
    g = spec.ood
    assert spec.has_ood_gate and stats is not None
    assert g["fit_on"] == "train" and g["threshold_on"] == "val" and g["acceptance"] == 0.95
    assert g["val_acceptance"] >= 0.95 and g["n_train"] > g["n_val"] > 0
    assert stats.means.shape == (spec.num_classes, g["dim"]) and 0 <= g["shrinkage"] <= 1
    ood_json = tiny_checkpoint.resolve().parent.parent / "ood.json"
    assert ood_json.is_file()


def test_onnx_export_carries_features_and_the_same_scores(tiny_checkpoint: Path, onnx_model: Path,
                                                          synth_data: Path) -> None:
    import onnxruntime as ort

    from fetalplanes.evaluation.ood import checkpoint_features

    spec, stats = _ckpt_stats(tiny_checkpoint)
    sess = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    onnx_spec = read_spec(onnx_model)
    assert onnx_spec.ood == spec.ood
    onnx_stats = ood_stats(onnx_spec, meta[OOD_KEY], str(onnx_model))
    paths = sorted((synth_data / "Images").glob("*.png"))[:6]
    images = [load_image(p) for p in paths]
    lg_t, ft_t = checkpoint_features(tiny_checkpoint, images)
    lg_o, ft_o = sess.run(["logits", "features"], {"image": preprocess_batch(images, spec.preprocessing)})
    np.testing.assert_allclose(lg_o, lg_t, atol=1e-3)
    for name in ("mahalanobis", "knn", "combined"):
        s_t, s_o = ood.score(name, ft_t, stats), ood.score(name, ft_o, onnx_stats)
        np.testing.assert_allclose(s_o, s_t, rtol=1e-3, atol=1e-3)
    far = preprocess_batch([load_image(p) for p in paths[:1]], spec.preprocessing) * 0 + 5.0  # a flat, saturated frame
    _, ft_far = sess.run(["logits", "features"], {"image": far.astype(np.float32)})
    assert ood.score(spec.ood["score"], ft_far, onnx_stats)[0] > spec.ood["threshold"]


def test_statistics_from_another_model_are_refused(tiny_checkpoint: Path) -> None:
    spec, stats = _ckpt_stats(tiny_checkpoint)
    other = ood.encode_stats(ood.OODStats(stats.means + 1, stats.precision, stats.bank, stats.knn_k, stats.norm))
    with pytest.raises(ModelFileError, match="m.onnx: OOD statistics do not match"):
        ood_stats(spec, other, "m.onnx")
    with pytest.raises(ModelFileError, match="holds no OOD statistics"):
        ood_stats(spec, None, "m.onnx")


def test_an_older_spec_has_no_gate() -> None:
    old = {"format_version": "1.3", "name": "m", "task": "planes", "class_names": ["a", "b"],
           "architecture": {"backbone": "x", "attention": "none"}}
    spec = ModelSpec.from_dict(old)
    assert spec.ood == {} and not spec.has_ood_gate
    assert ood_stats(spec, None, "old.onnx") is None
