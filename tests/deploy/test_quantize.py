"""Static int8 (QDQ) quantization: calibration on training images only, the accuracy gate
(refusal writes nothing, --force overrides), and a written int8 model that the runtime loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from fetalplanes.core.classes import PLANES  # noqa: E402
from fetalplanes.core.spec import ModelSpec  # noqa: E402
from fetalplanes.deploy import quantize as qz  # noqa: E402
from fetalplanes.runtime.artifact import SPEC_KEY, onnx_metadata  # noqa: E402
from fetalplanes.runtime import OnnxPredictor  # noqa: E402


@pytest.fixture(scope="module")
def fp32_model(tiny_checkpoint: Path, synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fetalplanes.deploy.export import export_checkpoint

    out = tmp_path_factory.mktemp("fp32") / "model.onnx"
    export_checkpoint(tiny_checkpoint, out, synth_data)
    return out


def _spec() -> ModelSpec:
    return ModelSpec("t", "planes", tuple(PLANES), {})


# ---------------------------------------------------------------- cheap unit tests


def test_gate_metrics_uses_labels_when_known() -> None:
    fp32 = np.eye(4, dtype=np.float32)[[0, 1, 2, 3]]
    int8 = np.eye(4, dtype=np.float32)[[0, 1, 2, 0]]  # one flip
    m = qz.gate_metrics(fp32, int8, np.array([0, 1, 2, 3]))
    assert m["agreement"] == pytest.approx(0.75)
    assert m["acc_fp32"] == pytest.approx(1.0) and m["acc_int8"] == pytest.approx(0.75)
    assert m["drop"] == pytest.approx(0.25) and m["drop_basis"] == "accuracy vs labels"
    # A flip towards the right label is a negative drop (int8 better), not a failure.
    better = qz.gate_metrics(int8, fp32, np.array([0, 1, 2, 3]))
    assert better["drop"] == pytest.approx(-0.25)


def test_gate_metrics_without_labels_falls_back_to_agreement() -> None:
    fp32 = np.eye(3, dtype=np.float32)[[0, 1, 2, 2]]
    int8 = np.eye(3, dtype=np.float32)[[0, 1, 1, 2]]
    m = qz.gate_metrics(fp32, int8, np.full(4, -1))
    assert "acc_fp32" not in m
    assert m["drop"] == pytest.approx(1 - m["agreement"]) == pytest.approx(0.25)


def test_calibration_uses_only_training_images_and_disjoint_holdout(synth_data: Path) -> None:
    from fetalplanes.data.sources import load_source

    calib, held, labels = qz.calibration_samples(synth_data, _spec(), holdout_fraction=0.3)
    official = {s.path: s.meta["official_split"] for s in load_source(synth_data).samples}
    assert calib and held and len(labels) == len(held)
    assert not set(calib) & set(held)
    assert {official[p] for p in calib + held} == {"train"}  # test images never calibrate
    assert len(held) == round(0.3 * sum(v == "train" for v in official.values()))
    assert (labels >= 0).all() and len(set(labels.tolist())) > 1  # labelled, several classes


def test_calibration_on_unknown_classes_has_no_labels(synth_data: Path, tmp_path: Path) -> None:
    for i, png in enumerate(sorted((synth_data / "Images").glob("*.png"))[:8]):
        (tmp_path / f"class{i % 2}").mkdir(exist_ok=True)
        shutil.copy(png, tmp_path / f"class{i % 2}" / png.name)
    _, held, labels = qz.calibration_samples(tmp_path, _spec())
    assert held and (labels == -1).all()


def test_int8_path_default() -> None:
    assert qz.int8_path("out/model.onnx") == Path("out/model.int8.onnx")


# ---------------------------------------------------------------- quantization runs


def _only_target_files(folder: Path, expected: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == expected  # no temporaries left behind


@pytest.mark.slow
def test_gate_refuses_and_writes_nothing(fp32_model: Path, synth_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.int8.onnx"
    # A negative threshold can never be met (accuracies lie in [0, 1]): the gate must refuse.
    with pytest.raises(qz.QuantizationGateError) as err:
        qz.quantize_onnx(fp32_model, out, synth_data, max_drop=-1.0)
    msg = str(err.value)
    assert "refused" in msg and "--max-drop" in msg and "--force" in msg and "nothing written" in msg
    assert "agreement" in msg
    assert not out.exists()
    _only_target_files(tmp_path, set())


@pytest.mark.slow
def test_force_writes_despite_gate(fp32_model: Path, synth_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "forced.onnx"
    report = qz.quantize_onnx(fp32_model, out, synth_data, max_drop=-1.0, force=True, latency_runs=2)
    assert out.is_file() and not report["passed"] and report["forced"]
    _only_target_files(tmp_path, {"forced.onnx"})


@pytest.mark.slow
def test_int8_model_passes_gate_and_runs(fp32_model: Path, synth_data: Path, tmp_path: Path) -> None:
    import onnx

    out = tmp_path / "model.int8.onnx"
    # The one-epoch fixture model is near chance, so its accuracy drop on ~10 hold-out images
    # is noise: a permissive threshold here; the refusal path is tested above.
    report = qz.quantize_onnx(fp32_model, out, synth_data, max_drop=1.0, latency_runs=3)
    assert out.is_file() and report["passed"] and not report["forced"]
    assert 0.0 <= report["agreement"] <= 1.0
    assert report["drop"] == pytest.approx(report["acc_fp32"] - report["acc_int8"])
    assert report["latency_ms_b1"]["fp32"] > 0 and report["latency_ms_b1"]["int8"] > 0

    # Really static int8 QDQ with int8 weights, ~4x smaller, same spec in the metadata.
    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in proto.graph.initializer)
    assert out.stat().st_size < 0.5 * fp32_model.stat().st_size
    meta = onnx_metadata(out)
    assert meta[SPEC_KEY] == onnx_metadata(fp32_model)[SPEC_KEY]
    assert json.loads(meta["quantization"])["format"] == "QDQ"

    # The runtime loads it; its logits track the fp32 model's.
    files = sorted((synth_data / "Images").glob("*.png"))[:6]
    fp32, int8 = OnnxPredictor(fp32_model), OnnxPredictor(out)
    from fetalplanes.core.io import load_image

    from fetalplanes.core.preprocess import preprocess_batch

    x = preprocess_batch([load_image(f) for f in files], fp32.spec.preprocessing)
    a, b = fp32.logits(x), int8.logits(x)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9
    assert [r.prediction.label for r in int8.predict(files)] == [fp32.class_names[i] for i in b.argmax(1)]
