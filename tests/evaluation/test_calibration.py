"""Temperature scaling, ECE, abstain threshold, checkpoint storage and the train pipeline's wiring."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fetalplanes.core.postprocess import softmax
from fetalplanes.evaluation import calibration as cal


def _sampled(n: int, c: int, t_true: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / t_true): the NLL optimum is t_true."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3.0, size=(n, c))
    p = softmax(logits, t_true).astype(np.float64)
    labels = np.array([rng.choice(c, p=row / row.sum()) for row in p])
    return logits, labels


@pytest.mark.parametrize("t_true", [0.7, 2.5])
def test_fit_temperature_recovers_the_generating_temperature(t_true: float) -> None:
    logits, labels = _sampled(3000, 6, t_true)
    t = cal.fit_temperature(logits, labels)
    assert t == pytest.approx(t_true, rel=0.12)
    assert cal.nll(logits, labels, t) <= cal.nll(logits, labels, 1.0)


def test_ece_matches_torchmetrics_and_drops_after_scaling() -> None:
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    logits, labels = _sampled(2000, 6, 2.5, seed=1)  # the raw logits are over-confident
    probs = softmax(logits, 1.0)
    ref = multiclass_calibration_error(torch.tensor(probs), torch.tensor(labels), num_classes=6, n_bins=15, norm="l1")
    assert cal.ece(probs, labels) == pytest.approx(float(ref), abs=1e-5)
    t = cal.fit_temperature(logits, labels)
    assert cal.ece(softmax(logits, t), labels) < cal.ece(probs, labels) / 2


def test_abstain_threshold_reaches_target_and_respects_coverage() -> None:
    logits, labels = _sampled(1500, 6, 1.0, seed=2)
    probs = softmax(logits, 1.0)
    base = float((probs.argmax(1) == labels).mean())
    target = min(0.99, base + 0.1)
    rule = cal.choose_abstain_threshold(probs, labels, target_accuracy=target, min_coverage=0.2)
    keep = probs.max(1) >= rule["threshold"]
    assert rule["target_reached"] is True and rule["rule"] == "target"
    assert (probs.argmax(1) == labels)[keep].mean() >= target
    assert rule["coverage"] == pytest.approx(keep.mean()) and rule["coverage"] >= 0.2
    by_cov = cal.choose_abstain_threshold(probs, labels, coverage=0.6)
    assert by_cov["coverage"] == pytest.approx(0.6, abs=0.01)
    never = cal.choose_abstain_threshold(probs, labels, target_accuracy=1.01, min_coverage=0.7)
    assert never["target_reached"] is False and never["coverage"] >= 0.7
    assert cal.choose_abstain_threshold(probs, labels, target_accuracy=0.0)["threshold"] == 0.0


def test_calibrate_checkpoint_stores_t_and_threshold(tiny_checkpoint: Path, synth_data: Path, tmp_path: Path) -> None:
    from fetalplanes.data.sources import load_source
    from fetalplanes.data.splits import select_split
    from fetalplanes.models.checkpoint import load_model

    ckpt = tmp_path / "best.ckpt"
    shutil.copy(tiny_checkpoint, ckpt)
    _, spec = load_model(ckpt)
    index = load_source(synth_data, spec.task)
    val, test = select_split(index, spec, "val"), select_split(index, spec, "test")
    r = cal.calibrate_checkpoint(ckpt, val, tmp_path / "cal", test, coverage=0.8)
    _, spec2 = load_model(ckpt)
    assert spec2.temperature == pytest.approx(r["temperature"])
    assert spec2.abstain_threshold == pytest.approx(r["abstain_threshold"])
    saved = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert saved["val"]["n"] == len(val) and saved["test"]["n"] == len(test)
    assert (tmp_path / "cal" / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_pipeline_calibrates_best_checkpoint(tiny_checkpoint: Path) -> None:
    """The train pipeline (workflow.train_and_calibrate; trainer.calibrate defaults to True)
    leaves calibration.json and a calibrated spec."""
    from fetalplanes.models.checkpoint import read_checkpoint

    run = tiny_checkpoint.parent.parent
    saved = json.loads((run / "calibration.json").read_text())
    spec = read_checkpoint(tiny_checkpoint)["fetalplanes"]["spec"]
    assert spec["temperature"] == pytest.approx(saved["temperature"])
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["calibration"]["temperature"] == saved["temperature"]
    # one calibration entry (calibrate_on_data) for the pipeline and `fetalplanes calibrate`: the
    # run's file records which images (the training run's own validation split) and the OOD refit
    assert saved["selection"]["val"] == {"split": "val", "rule": "training run", "n": saved["val"]["n"]}
    assert saved["ood"]["refitted"] and summary["ood"] == saved["ood"] and "ood" not in summary["calibration"]


def test_calibrate_cli_dry_run_keeps_checkpoint(tiny_checkpoint: Path, synth_data: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fetalplanes import cli

    cli._register()  # idempotent: every group once, whatever other tests registered
    app = cli.app
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(tiny_checkpoint, ckpt)
    before = ckpt.read_bytes()
    res = CliRunner().invoke(app, ["calibrate", "--checkpoint", str(ckpt), "--data", str(synth_data),
                                   "--out", str(tmp_path / "c"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "NOT written" in res.output and ckpt.read_bytes() == before
    assert (tmp_path / "c" / "calibration.json").is_file()


@pytest.mark.slow
def test_onnx_metadata_carries_the_temperature(tiny_checkpoint: Path, tmp_path: Path) -> None:
    export = pytest.importorskip("fetalplanes.deploy.export")
    from fetalplanes.core.spec import ModelSpec
    from fetalplanes.models.checkpoint import update_spec
    from fetalplanes.runtime.artifact import SPEC_KEY, onnx_metadata

    ckpt = tmp_path / "best.ckpt"
    shutil.copy(tiny_checkpoint, ckpt)
    update_spec(ckpt, temperature=1.7321, abstain_threshold=0.4242)
    export.export_checkpoint(ckpt, tmp_path / "model.onnx")
    spec = ModelSpec.from_json(onnx_metadata(tmp_path / "model.onnx")[SPEC_KEY])
    assert spec.temperature == pytest.approx(1.7321) and spec.abstain_threshold == pytest.approx(0.4242)


def test_separable_validation_keeps_temperature_one() -> None:
    """No validation error: the NLL minimum is T -> 0, which would wreck test calibration."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, 50)
    logits = rng.normal(0, 1, (50, 6))
    logits[np.arange(50), labels] += 4.0  # every validation case right
    r = cal.calibrate_logits(logits, labels)
    assert r["temperature"] == 1.0 and "no validation errors" in r["temperature_note"]
    assert cal.fit_temperature(logits, labels) < 0.5  # what an unguarded fit would have done
