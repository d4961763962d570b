"""ONNX export: parity with PyTorch for every attention type, the spec in the metadata,
dynamic batch, refusal (nothing written) when ONNX Runtime disagrees, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from fetalplanes.core.classes import PLANES  # noqa: E402
from fetalplanes.core.preprocess import preprocess_batch  # noqa: E402
from fetalplanes.core.spec import ModelSpec  # noqa: E402
from fetalplanes.deploy import export as ex  # noqa: E402
from fetalplanes.runtime import OnnxPredictor  # noqa: E402
from fetalplanes.runtime.artifact import onnx_metadata  # noqa: E402

SIZE = 64


def _model_and_spec(attention: str, seed: int = 0) -> tuple[torch.nn.Module, ModelSpec]:
    from fetalplanes.models import create_model
    from fetalplanes.models.registry import default_preprocessing

    torch.manual_seed(seed)
    model = create_model("paper_lite0", len(PLANES), pretrained=False, attention=attention).eval()
    if attention == "mhsa":
        # The zero-init residual gate would make MHSA the identity: open it so the
        # attention path really is part of the exported graph that parity checks.
        with torch.no_grad():
            model.attention.gamma.fill_(0.5)
    spec = ModelSpec(f"test-{attention}", "planes", tuple(PLANES), dict(model.config), default_preprocessing(model, SIZE))
    return model, spec


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["cbam", "se", "mhsa", "none"])
def test_parity_metadata_and_dynamic_batch(attention: str, tmp_path: Path) -> None:
    model, spec = _model_and_spec(attention)
    out = tmp_path / "model.onnx"
    report = ex.export_onnx(model, spec, out)

    assert out.is_file() and report["path"] == str(out)
    assert report["passed"] and report["argmax_mismatches"] == 0
    assert report["max_abs_logit_diff"] < ex.FP32_TOLERANCE
    assert set(report["max_abs_logit_diff_by_batch"]) == {"batch1", f"batch{report['n_images']}"}
    assert report["n_images"] > 1

    meta = onnx_metadata(out)
    assert ModelSpec.from_json(meta[ex.SPEC_KEY]) == spec
    assert json.loads(meta["class_names"]) == list(PLANES)
    assert int(meta["image_size"]) == SIZE
    assert json.loads(meta["mean"]) == pytest.approx(list(spec.preprocessing.mean))
    assert json.loads(meta["std"]) == pytest.approx(list(spec.preprocessing.std))
    assert meta["task"] == "planes" and meta["name"] == spec.name
    assert json.loads(meta["export_parity"])["max_abs_logit_diff"] == report["max_abs_logit_diff"]

    # A batch size never seen at export time (dynamic axis) still matches PyTorch.
    pred = OnnxPredictor(out)
    inp = pred.session.get_inputs()[0]
    assert inp.name == "image" and not isinstance(inp.shape[0], int)
    x = preprocess_batch(ex.builtin_images(PLANES, per_class=1)[:5], spec.preprocessing)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    got = pred.logits(x)
    assert got.shape == (5, len(PLANES))
    np.testing.assert_allclose(got, ref, atol=ex.FP32_TOLERANCE)
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.fixture(scope="module")
def cbam_proto():
    """A CBAM model's ONNX graph, exported once for the failure tests."""
    model, spec = _model_and_spec("cbam")
    return ex._to_onnx(model, spec.preprocessing.image_size, ex.DEFAULT_OPSET, "dynamo")


@pytest.mark.slow
def test_parity_failure_writes_nothing(cbam_proto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The graph of one model checked against another model's weights: a genuine mismatch.
    other, spec = _model_and_spec("cbam", seed=1)
    monkeypatch.setattr(ex, "_to_onnx", lambda *a, **k: cbam_proto)
    out = tmp_path / "sub" / "model.onnx"
    with pytest.raises(ex.ParityError, match="not written") as err:
        ex.export_onnx(other, spec, out)
    assert "max |logit diff|" in str(err.value)
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())  # no temporary left behind


@pytest.mark.slow
def test_export_refuses_when_tolerance_unmet(cbam_proto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, spec = _model_and_spec("cbam")
    monkeypatch.setattr(ex, "_to_onnx", lambda *a, **k: cbam_proto)
    out = tmp_path / "model.onnx"
    with pytest.raises(ex.ParityError):
        ex.export_onnx(model, spec, out, tolerance=0.0)  # no diff is < 0
    assert not out.exists()
    # With the real tolerance the same graph and model pass and the file appears.
    report = ex.export_onnx(model, spec, out, verify_images=ex.builtin_images(PLANES, per_class=1)[:3])
    assert out.is_file() and report["n_images"] == 3 and report["verify_source"] == "given images"


def test_unknown_exporter_is_a_clear_error(tmp_path: Path) -> None:
    model, spec = _model_and_spec("none")
    with pytest.raises(ValueError, match="dynamo"):
        ex.export_onnx(model, spec, tmp_path / "m.onnx", exporter="tflite")
    assert not (tmp_path / "m.onnx").exists()


def _cli():
    # Every command group, as the console entry point registers them: registering only `export`
    # here would leave the shared app without the others for tests that run later.
    from fetalplanes import cli

    cli._register()  # idempotent: every group once, whatever other tests registered
    return cli.app


def test_cli_int8_requires_calibration(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(_cli(), ["export", "--checkpoint", str(tmp_path / "x.ckpt"), "--out", str(tmp_path / "m.onnx"), "--int8"])
    assert result.exit_code != 0
    assert "--calibration" in str(result.exception)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_cli_export_checkpoint_on_real_images(tiny_checkpoint: Path, synth_data: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fetalplanes.runtime import load_predictor

    out, report = tmp_path / "model.onnx", tmp_path / "report.json"
    args = ["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--calibration", str(synth_data), "--report", str(report)]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    assert "max |logit diff|" in result.output
    fp32 = json.loads(report.read_text())["fp32"]
    assert fp32["passed"] and fp32["verify_source"] == "given images" and fp32["max_abs_logit_diff"] < ex.FP32_TOLERANCE

    # The exported model answers like the checkpoint, through the torch-free runtime.
    files = sorted((synth_data / "Images").glob("*.png"))[:4]
    ckpt = load_predictor(tiny_checkpoint)
    ref, spec = [(r.path, r.prediction) for r in ckpt.predict(files, k=2)], ckpt.spec
    got = [(r.path, r.prediction) for r in load_predictor(out).predict(files, k=2)]
    assert OnnxPredictor(out).spec == spec
    for (p_ref, a), (p_got, b) in zip(ref, got):
        assert Path(p_ref) == p_got and a.label == b.label
        assert b.confidence == pytest.approx(a.confidence, abs=1e-4)
