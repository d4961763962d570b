"""`evaluate --split test` never scores an image the model was trained or validated on.

The model (``tiny_checkpoint``, trained on ``synth_data``) records its train/val/test images in its
spec; laid out as a CSV without a split column, the same images give exactly the held-out test
split, a CSV mixing held-out and training images is refused, ``--split all`` counts the seen
images, the ONNX export selects the same images, and fresh phantoms are an external test set.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fetalplanes.core.errors import DataError
from fetalplanes.data.sources import load_source
from fetalplanes.evaluation.report import evaluate


def _as_csv(samples, class_names, folder: Path) -> Path:
    """The images copied into ``folder/images`` (renamed: content, not the name, identifies them)
    and listed in ``folder/labels.csv`` without a split column."""
    (folder / "images").mkdir(parents=True)
    with (folder / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "patient"])
        for k, s in enumerate(samples):
            shutil.copy(s.path, folder / "images" / f"img{k:04d}.png")
            w.writerow([f"images/img{k:04d}.png", class_names[s.label], s.patient])
    return folder / "labels.csv"


@pytest.fixture(scope="module")
def run_images(synth_data: Path):
    """synth_data's samples grouped by the split the run (official scheme) put them in."""
    index = load_source(synth_data)
    test = [s for s in index.samples if s.meta["official_split"] == "test"]
    train = [s for s in index.samples if s.meta["official_split"] == "train"]
    return index, test, train


def _scored(out: Path) -> list[str]:
    with (out / "predictions.csv").open() as f:
        return [row["image"] for row in csv.DictReader(f)]


def test_run_data_as_csv_scores_only_the_held_out_test_images(tiny_checkpoint, run_images, tmp_path):
    index, test, _ = run_images
    listing = _as_csv(index.samples, index.class_names, tmp_path / "csv")
    m = evaluate(tiny_checkpoint, listing, tmp_path / "ev", "test", n_boot=20)
    sel = m["selection"]
    assert sel["rule"] == "record" and sel["seen_in_training_or_validation"] == 0
    assert m["n"] == sel["n_scored"] == len(test) < sel["n_data"] == len(index)
    wanted = {f"img{k:04d}.png" for k, s in enumerate(index.samples) if s.meta["official_split"] == "test"}
    assert set(_scored(tmp_path / "ev")) == wanted
    report = (tmp_path / "ev" / "report.md").read_text()
    assert f"none of the {len(test)} scored images was seen in training or validation" in report
    assert "the test images the run recorded in the model file" in report


def test_mixed_csv_is_refused_and_all_warns_with_the_overlap_count(tiny_checkpoint, run_images, tmp_path):
    index, test, train = run_images
    mixed = test[:2] + train[:3]
    listing = _as_csv(mixed, index.class_names, tmp_path / "mixed")
    with pytest.raises(DataError, match=r"refused.*3 image\(s\) this model was trained .*--split all"):
        evaluate(tiny_checkpoint, listing, tmp_path / "ev", "test", n_boot=20)
    assert not (tmp_path / "ev").exists()  # nothing written
    m = evaluate(tiny_checkpoint, listing, tmp_path / "all", "all", n_boot=20)
    assert m["n"] == 5 and m["selection"]["rule"] == "all"
    assert m["selection"]["seen_in_training_or_validation"] == 3
    assert m["selection"]["seen_train"] + m["selection"]["seen_val"] == 3
    report = (tmp_path / "all" / "report.md").read_text()
    assert "**WARNING**: 3 of the 5 scored images were seen in training" in report


def test_refusal_is_one_line_from_the_cli(tiny_checkpoint, run_images, tmp_path):
    index, test, train = run_images
    listing = _as_csv(test[:1] + train[:1], index.class_names, tmp_path / "mixed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "fetalplanes", "evaluate", "--checkpoint", str(tiny_checkpoint),
                           "--data", str(listing.parent), "--out", str(tmp_path / "ev")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "refused" in ln]
    assert len(lines) == 1 and "--split all" in lines[0]


def test_record_survives_onnx_export(tiny_checkpoint, onnx_model, run_images, tmp_path):
    index, test, _ = run_images
    listing = _as_csv(index.samples, index.class_names, tmp_path / "csv")
    a = evaluate(tiny_checkpoint, listing, tmp_path / "ckpt", "test", n_boot=20)
    b = evaluate(onnx_model, listing, tmp_path / "onnx", "test", n_boot=20)
    assert b["model_kind"] != a["model_kind"]
    assert b["selection"] == a["selection"] and _scored(tmp_path / "onnx") == _scored(tmp_path / "ckpt")


def test_fresh_phantoms_are_an_external_test_set(tiny_checkpoint, tmp_path):
    from fetalplanes.data.synth import synthesize

    fresh = load_source(synthesize(tmp_path / "fresh", per_class=2, seed=7, image_size=(160, 128)))
    listing = _as_csv(fresh.samples, fresh.class_names, tmp_path / "csv")
    m = evaluate(tiny_checkpoint, listing, tmp_path / "ev", "test", n_boot=20)
    assert m["selection"]["rule"] == "external" and m["n"] == len(fresh) == 12
    assert m["selection"]["seen_in_training_or_validation"] == 0
    assert "external test set" in (tmp_path / "ev" / "report.md").read_text()


def test_calibrate_and_explain_inputs_say_what_they_took(tiny_checkpoint, synth_data, run_images, tmp_path):
    from fetalplanes.evaluation.calibration import calibrate_on_data
    from fetalplanes.explain.pipeline import gather_inputs
    from fetalplanes.runtime import read_spec

    index, test, _ = run_images
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(tiny_checkpoint, ckpt)
    listing = _as_csv(index.samples, index.class_names, tmp_path / "csv")
    r = calibrate_on_data(ckpt, listing, tmp_path / "cal", write=False)
    saved = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert saved["selection"] == r["selection"]
    assert saved["selection"]["val"]["rule"] == "record"
    test_sel = saved["selection"]["test"]
    assert test_sel["rule"] == "record" and test_sel["seen_in_training_or_validation"] == 0
    assert saved["test"]["n"] == len(test)
    ins = gather_inputs(read_spec(tiny_checkpoint), data=listing, split="test")
    assert ins.selection["rule"] == "record" and len(ins.samples) == len(test)
