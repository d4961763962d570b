"""The OOD gate in the Predictor: the checkpoint and its ONNX export give the same verdicts and
scores; blank and photographic frames are "not a fetal plane"; models without a gate say so;
evaluate --ood-data measures the gate and the model card lists the set."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fetalplanes.runtime import load_predictor


def _images(synth_data: Path, n: int = 4) -> list[Path]:
    return sorted((synth_data / "Images").glob("*.png"))[:n]


def _far(tmp: Path, unreadable: bool = False) -> Path:
    """A folder of clearly foreign inputs: blank and noise frames, a photograph, and a CT DICOM
    (and, with ``unreadable``, a truncated PNG and a DICOM preamble followed by junk)."""
    folder = tmp / "far"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.new("L", (200, 150), 0).save(folder / "black.png")
    Image.new("L", (200, 150), 255).save(folder / "white.png")
    Image.fromarray(rng.integers(0, 256, (150, 200), dtype=np.uint8)).save(folder / "noise.png")
    data = pytest.importorskip("skimage.data")
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    examples = pytest.importorskip("pydicom.examples")
    shutil.copy(examples.get_path("ct"), folder / "ct.dcm")
    if unreadable:
        (folder / "cut.png").write_bytes((folder / "noise.png").read_bytes()[:200])
        (folder / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    return folder


def test_checkpoint_and_onnx_give_the_same_ood_verdicts(tiny_checkpoint: Path, onnx_model: Path, synth_data: Path,
                                                       tmp_path: Path) -> None:
    inputs = [*_images(synth_data), *sorted(_far(tmp_path).glob("*.png"))]
    a, b = load_predictor(tiny_checkpoint), load_predictor(onnx_model)
    assert a.has_ood_gate and b.has_ood_gate
    ra, rb = a.predict(inputs), b.predict(inputs)
    sa = np.array([r.prediction.ood_score for r in ra])
    sb = np.array([r.prediction.ood_score for r in rb])
    np.testing.assert_allclose(sb, sa, rtol=1e-3, atol=1e-3)
    # The same verdicts, except for a score within the two backends' float tolerance of the
    # threshold (there the last bits of float32 kernels decide, on any machine).
    thr = b.spec.ood["threshold"]
    clear = np.abs(sa - thr) > 1e-3 * max(1.0, abs(thr))
    assert clear.sum() >= len(sa) - 2
    assert ([r.prediction.state for r, c in zip(ra, clear) if c]
            == [r.prediction.state for r, c in zip(rb, clear) if c])
    # blank frames are nothing like a fetal plane: the gate rejects them on both paths
    states = {r.path.name: r.prediction.state for r in rb}
    assert states["black.png"] == states["white.png"] == "out_of_distribution"
    assert rb[0].prediction.to_dict()["ood"]["threshold"] == pytest.approx(b.spec.ood["threshold"])
    assert "threshold" in b.describe()["ood_gate"]


def test_a_model_without_statistics_answers_and_says_it_has_no_gate(tiny_checkpoint: Path, synth_data: Path,
                                                                    tmp_path: Path) -> None:
    export = pytest.importorskip("fetalplanes.deploy.export")
    from fetalplanes.models.checkpoint import load_model

    model, spec = load_model(tiny_checkpoint)
    out = tmp_path / "nogate.onnx"
    export.export_onnx(model, spec, out)  # no statistics given: exported without the gate
    p = load_predictor(out)
    r = p.predict(_images(synth_data, 1))[0]
    assert not p.has_ood_gate and not r.prediction.ood and r.prediction.state in ("plane", "abstain")
    assert r.prediction.to_dict()["ood"] == {"gate": False, "note": "no OOD gate in this model file"}
    assert p.describe()["ood_gate"].startswith("none")


def test_evaluate_ood_data_and_the_model_card(onnx_model: Path, synth_data: Path, tmp_path: Path) -> None:
    from fetalplanes.evaluation.model_card import render_card
    from fetalplanes.evaluation.report import evaluate

    far = _far(tmp_path, unreadable=True)
    m = evaluate(onnx_model, synth_data, tmp_path / "eval", split="all", n_boot=50, unit="image", ood_data=[far])
    row = m["ood"]["sets"]["far"]
    # counted apart: the CT refused by the metadata gate, the two broken files unreadable, the rest scored
    assert (row["refused_by_gate"], row["unreadable"], row["scored"]) == (1, 2, 4)
    assert row["n_ood"] == 4 and 0.0 <= row["auroc"] <= 1.0 and row["auroc_ci95"] is not None
    assert row["ood_rejected"] >= 0.5  # blank frames at least
    assert 0 <= m["ood"]["id_rejected"] <= 1 and m["ood"]["n_id"] == m["n"]
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Out-of-distribution inputs" in report and "| far | 4 | 1 | 2 |" in report
    from fetalplanes.runtime.artifact import read_spec

    card = render_card(read_spec(onnx_model), m)
    assert "## Out-of-distribution inputs" in card and "| far | 4 |" in card


def test_evaluate_cli_prints_the_three_counts_apart(cli_run, onnx_model: Path, synth_data: Path, tmp_path: Path) -> None:
    """Finding: unreadable files were counted with the metadata gate's refusals."""
    import json

    far = _far(tmp_path, unreadable=True)
    out = tmp_path / "eval"
    proc = cli_run("evaluate", "--model", str(onnx_model), "--data", str(synth_data), "--split", "all", "--out",
                   str(out), "--n-boot", "20", "--unit", "image", "--ood-data", str(far))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OOD far: 4 scored, 1 refused by the metadata gate, 2 unreadable;" in proc.stdout
    row = json.loads((out / "metrics.json").read_text())["ood"]["sets"]["far"]
    assert (row["scored"], row["refused_by_gate"], row["unreadable"]) == (4, 1, 2)


def test_the_gate_refusal_is_marked_and_an_unreadable_file_is_not(onnx_model: Path, tmp_path: Path) -> None:
    from fetalplanes.core.errors import GateRefusal, ImageLoadError

    far = _far(tmp_path, unreadable=True)
    results = {r.path.name: r for r in load_predictor(onnx_model).predict([far / "ct.dcm", far / "junk.dcm", far / "cut.png"])}
    assert results["ct.dcm"].gate_refused and "not ultrasound" in results["ct.dcm"].error
    assert not results["junk.dcm"].gate_refused and not results["cut.png"].gate_refused
    err = GateRefusal("x.dcm", "not ultrasound (Modality CT)", "US").with_frame(2)
    assert isinstance(err, GateRefusal) and isinstance(err, ImageLoadError) and str(err).startswith("x.dcm: frame 2:")
