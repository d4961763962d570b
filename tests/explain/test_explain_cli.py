"""``fetalplanes explain`` end to end on tiny data: files, report, localization, real images."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fetalplanes.core.errors import BadFilesError
from fetalplanes.training.config import load_config


def _cli():
    from fetalplanes.cli import app
    from fetalplanes.cli.explain import register

    if "explain" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        register(app)
    return app


def run_cli(*args: str):
    from typer.testing import CliRunner

    return CliRunner().invoke(_cli(), ["explain", *map(str, args), "--no-progress"])


def test_folder_of_images_with_masks_next_to_them(tiny_checkpoint: Path, synth_data: Path, tmp_path: Path) -> None:
    """HC18 layout: NNN.png beside NNN_Mask.png in one folder; masks are matched, never explained."""
    folder = tmp_path / "in"
    folder.mkdir()
    images = sorted((synth_data / "Images").glob("*.png"))[:3]
    for p in images:
        shutil.copy(p, folder / p.name)
        Image.open(synth_data / "Masks" / p.name).convert("RGB").save(folder / f"{p.stem}_Mask.png")
    out = tmp_path / "out"
    res = run_cli(folder, "--checkpoint", tiny_checkpoint, "--out", out, "--masks", folder, "--occlusion", "1")
    assert res.exit_code == 0, res.output
    records = json.loads((out / "explanations.json").read_text())["images"]
    assert sorted(r["name"] for r in records) == sorted(p.stem for p in images)
    for r, p in zip(sorted(records, key=lambda r: r["name"]), images):
        size = Image.open(p).size
        assert Image.open(out / r["overlay"]).size == size  # overlay at the image's own size
        cam = np.load(out / r["cam"])
        assert cam.shape == (size[1], size[0]) and cam.dtype == np.float32
        assert 0.0 <= cam.min() and cam.max() <= 1.0
        assert r["localization"]["mask"].endswith(f"{p.stem}_Mask.png")
    occluded = [r for r in records if "occlusion" in r]
    assert len(occluded) == 1 and (out / occluded[0]["occlusion"]["overlay"]).is_file()
    # No --method/--layer: the checkpoint's own explain settings (the demo config's) are used.
    settings = json.loads((out / "explanations.json").read_text())
    shipped = load_config("demo").explain
    assert (settings["method"], settings["layer"]) == (shipped.method, shipped.layer)
    loc = json.loads((out / "localization.json").read_text())
    name = shipped.method
    assert loc["n_with_mask"] == 3 and set(loc["maps"]) == {name, f"{name} (occlusion subset)", "occlusion"}
    pg = loc["maps"][name]["pointing_game"]
    assert 0.0 <= pg["hit_rate"] <= 1.0 and 0.0 < pg["chance_uniform"] < 1.0
    html = (out / "index.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the report must not reach the network"
    assert html.count("data:image/jpeg;base64,") == 4  # 3 CAM thumbnails + 1 occlusion
    assert "predicted" in html and "occlusion" in html


def test_labelled_dataset_gives_per_class_correct_and_incorrect_galleries(
    tiny_checkpoint: Path, synth_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    res = run_cli("--data", synth_data, "--split", "test", "--checkpoint", tiny_checkpoint, "--out", out,
                  "--method", "eigencam", "--limit", "6")
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "explanations.json").read_text())
    assert doc["split"] == "test" and len(doc["images"]) == 6
    assert all(r["true"] is not None and r["method"] == "eigencam" for r in doc["images"])
    html = (out / "index.html").read_text()
    assert "correct" in html and "incorrect" in html and "SYNTHETIC" in html
    # the synthetic set ships structure masks: they are found without --masks
    assert json.loads((out / "localization.json").read_text())["n_with_mask"] == 6
    assert "pointing game" in res.output


def test_explicit_target_and_user_errors(tiny_checkpoint: Path, synth_data: Path, tmp_path: Path) -> None:
    image = sorted((synth_data / "Images").glob("*.png"))[0]
    res = run_cli(image, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "o", "--target", "Fetal femur")
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "o" / "explanations.json").read_text())["images"][0]
    assert rec["target"] == "Fetal femur"
    assert not (tmp_path / "o" / "localization.json").exists()  # no masks, no score
    bad = run_cli(image, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "b", "--method", "nope")
    assert isinstance(bad.exception, ValueError) and "gradcam" in str(bad.exception)
    bad = run_cli(image, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "b", "--target", "Heart")
    assert isinstance(bad.exception, ValueError) and "Fetal brain" in str(bad.exception)
    bad = run_cli("--checkpoint", tiny_checkpoint, "--out", tmp_path / "b")
    assert isinstance(bad.exception, ValueError) and "--data" in str(bad.exception)


def test_unreadable_files_stop_the_run_or_are_skipped(tiny_checkpoint: Path, synth_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(sorted((synth_data / "Images").glob("*.png"))[0], folder / "ok.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "empty.png").write_bytes(b"")
    # By default every bad file is listed at once and nothing is explained ...
    res = run_cli(folder, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "stop")
    assert isinstance(res.exception, BadFilesError), res.output
    assert [Path(name).name for name, _ in res.exception.bad] == ["broken.png", "empty.png"]
    assert "--skip-bad" in str(res.exception) and not (tmp_path / "stop" / "index.html").exists()
    # ... with --skip-bad the good ones are explained and the bad ones named.
    res = run_cli(folder, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "o", "--skip-bad")
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "o" / "explanations.json").read_text())
    assert [r["name"] for r in doc["images"]] == ["ok"]
    assert [Path(r["image"]).name for r in doc["skipped"]] == ["broken.png", "empty.png"]
    assert "empty file" in doc["skipped"][1]["error"]


def test_real_hc18_images_with_their_head_masks(tiny_checkpoint: Path, shared_data: Path, tmp_path: Path) -> None:
    hc18 = shared_data / "hc18" / "images"
    folder = tmp_path / "hc18"
    folder.mkdir()
    for stem in sorted(p.stem for p in hc18.glob("*_HC.png"))[:2]:
        shutil.copy(hc18 / f"{stem}.png", folder)
        shutil.copy(hc18 / f"{stem}_Mask.png", folder)
    out = tmp_path / "out"
    res = run_cli(folder, "--checkpoint", tiny_checkpoint, "--out", out, "--masks", folder, "--method", "gradcam",
                  "--layer", "cam_layer")
    assert res.exit_code == 0, res.output
    records = json.loads((out / "explanations.json").read_text())["images"]
    assert len(records) == 2 and {r["method"] for r in records} == {"gradcam"}
    for r in records:
        assert Image.open(out / r["overlay"]).size == tuple(r["size"]) == Image.open(r["image"]).size
    loc = json.loads((out / "localization.json").read_text())
    assert loc["n_with_mask"] == 2 and 0.0 < loc["maps"]["gradcam"]["mask_area_fraction"] < 1.0


def test_each_explanation_carries_the_products_answer(tiny_checkpoint: Path, shared_data: Path, tmp_path: Path) -> None:
    """A heat map explains the top class; whether that class is the answer (plane), a withheld one
    (abstain) or "not a fetal plane" (OOD gate) is the predictor's, and the report must say it
    (it printed 'Other 58%' under a map for an image `predict` calls not a fetal plane)."""
    from fetalplanes.runtime import load_predictor

    images = [shared_data / "dicom_us" / "OBXXXX1A.dcm", shared_data / "dicom_us" / "US1_UNCR.dcm"]
    out = tmp_path / "o"
    res = run_cli(*images, "--checkpoint", tiny_checkpoint, "--out", out, "--method", "gradcam")
    assert res.exit_code == 0, res.output
    records = json.loads((out / "explanations.json").read_text())["images"]
    predictor = load_predictor(tiny_checkpoint)
    expected = [predictor.predict(p)[0].prediction for p in images]
    assert [r["state"] for r in records] == [p.state for p in expected]
    assert [r["ood"] for r in records] == [p.to_dict()["ood"] for p in expected]
    # As `predict`: a rejected input carries no plane, only the class its map explains, named as such.
    assert [r["label"] for r in records] == [p.to_dict()["label"] for p in expected]
    assert all(r["nearest_plane"] for r in records if r["state"] == "out_of_distribution")
    page = (out / "index.html").read_text()
    for p in expected:
        if p.state != "plane":
            assert {"out_of_distribution": "NOT A FETAL PLANE", "abstain": "answer: abstain"}[p.state] in page


def test_a_cine_is_explained_at_the_chosen_frame_and_says_so(tiny_checkpoint: Path, shared_data: Path,
                                                             tmp_path: Path) -> None:
    """Finding: explain on a cine silently used frame 0. Now --frame N (default 0), named in the output."""
    from fetalplanes.core.frames import read_frame

    cine = shared_data / "dicom_us" / "dbdicom_0020.DCM"  # 11 frames
    res = run_cli(cine, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "f3", "--frame", "3")
    assert res.exit_code == 0, res.output
    assert f"{cine}: frame 3 of 11 explained" in res.output
    rec = json.loads((tmp_path / "f3" / "explanations.json").read_text())["images"][0]
    assert (rec["frame"], rec["frames"]) == (3, 11)
    cam3 = np.load(tmp_path / "f3" / rec["cam"])
    res = run_cli(cine, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "f0")
    rec0 = json.loads((tmp_path / "f0" / "explanations.json").read_text())["images"][0]
    assert rec0["frame"] == 0 and "frame 0 of 11 explained" in res.output
    frames = [read_frame(cine, i)[0].image for i in (0, 3)]
    assert not np.array_equal(np.asarray(frames[0]), np.asarray(frames[1]))  # the frames differ ...
    assert not np.array_equal(np.load(tmp_path / "f0" / rec0["cam"]), cam3)  # ... and so do their maps
    # a frame past the end: one line naming the file and the frame count; nothing explained
    res = run_cli(cine, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "f99", "--frame", "99")
    assert isinstance(res.exception, BadFilesError)
    (name, reason), = res.exception.bad
    assert Path(name) == cine and reason.startswith("frame 99 does not exist: the file has 11 frame(s)")
    assert not (tmp_path / "f99" / "index.html").exists()
