"""The model's record of its train/val/test images and the split rule built on it (data.splits.choose_split)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from fetalplanes.core.errors import DataError, UsageError
from fetalplanes.core.spec import ModelSpec
from fetalplanes.data.provenance import ID_CHARS, ImageRecord, build_record, image_id
from fetalplanes.data.records import DatasetIndex, Sample
from fetalplanes.data.splits import choose_split, select_split

CLASSES = ("a", "b")


def _png(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 6), value).save(path)
    return path


def _data(root: Path, n: int = 12, offset: int = 0, column: bool = False) -> DatasetIndex:
    """``n`` distinct images, patient i // 2; with ``column`` the last third is the test split."""
    samples = []
    for i in range(n):
        meta = {"official_split": "test" if i >= 2 * n // 3 else "train"} if column else {}
        samples.append(Sample(_png(root / "img" / f"{i:03d}.png", offset + 10 * i), i % 2, str(i // 2), meta))
    return DatasetIndex(samples, CLASSES, "csv", root)


def _spec(index: DatasetIndex, record: bool = True, scheme: str = "official") -> ModelSpec:
    """A model 'trained' with images 0-5 train, 6-7 val, 8-11 test (patient-level)."""
    s = index.samples
    parts = {"train": s[:6], "val": s[6:8], "test": s[8:12]}
    training = {"splits": {"scheme": scheme, "seed": 0, "val_fraction": 0.2}}
    if record:
        training["images"] = build_record(parts, index.root)
    return ModelSpec("m", "planes", CLASSES, {}, training=training)


def test_record_is_compact_json_and_decodes(tmp_path: Path):
    index = _data(tmp_path)
    raw = _spec(index).training["images"]
    json.dumps(raw)  # travels in the spec's JSON (checkpoint and ONNX metadata)
    assert raw["test"]["n"] == 4 and len(raw["test"]["ids"]) == 4 * ID_CHARS
    assert raw["train"]["patients"] == ["0", "1", "2"]
    rec = ImageRecord.from_training({"images": raw})
    assert image_id(index.samples[9].path) in rec.parts["test"].ids
    assert rec.parts["test"].id_of_path["img/009.png"] == image_id(index.samples[9].path)
    assert ImageRecord.from_training({}) is None


def test_content_not_name_identifies_an_image(tmp_path: Path):
    a = _png(tmp_path / "a.png", 5)
    shutil.copy(a, tmp_path / "copy.png")
    _png(tmp_path / "other.png", 6)
    assert image_id(a) == image_id(tmp_path / "copy.png") != image_id(tmp_path / "other.png")
    assert image_id(tmp_path / "missing.png") is None


def test_run_data_in_another_layout_scores_exactly_the_held_out_test_images(tmp_path: Path):
    index = _data(tmp_path / "run")
    spec = _spec(index)
    # The same files copied elsewhere, renamed, in another order, no split column.
    moved = [Sample(Path(shutil.copy(s.path, tmp_path / f"x{k}.png")), s.label, s.patient)
             for k, s in enumerate(reversed(index.samples))]
    other = DatasetIndex(moved, CLASSES, "csv", tmp_path)
    sel = choose_split(other, spec, "test")
    assert sel.rule == "record" and sel.seen == {"train": 0, "val": 0, "any": 0}
    assert sorted(image_id(s.path) for s in sel.samples) == sorted(image_id(s.path) for s in index.samples[8:])
    assert "none of the 4 scored images was seen" in sel.summary()["statement"]
    val = choose_split(other, spec, "val")
    assert val.rule == "record" and len(val.samples) == 2 and val.seen["val"] == 2


def test_mixed_subset_is_refused_and_all_counts_the_seen_images(tmp_path: Path):
    index = _data(tmp_path)
    spec = _spec(index)
    mixed = index.subset(index.samples[4:10])  # 2 train, 2 val, 2 of the 4 test images
    with pytest.raises(DataError, match=r"refused.*trained \(2\) or validated \(2\).*--split all") as err:
        choose_split(mixed, spec, "test")
    assert "\n" not in str(err.value)
    sel = choose_split(mixed, spec, "all")
    assert sel.rule == "all" and len(sel.samples) == 6 and sel.seen == {"train": 2, "val": 2, "any": 4}
    assert sel.summary()["seen_in_training_or_validation"] == 4


def test_seen_images_warn_only_when_the_split_asked_for_is_not_train_or_val(tmp_path: Path, caplog):
    """The OOD gate is fit on the train split and calibration on val: their images are seen by
    definition, so saying so is INFO; scoring seen images under any other split is a WARNING."""
    import logging

    index = _data(tmp_path)
    spec = _spec(index)
    for split, level in (("train", logging.INFO), ("val", logging.INFO), ("all", logging.WARNING)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fetalplanes.data.splits"):
            choose_split(index, spec, split)
        seen = [r for r in caplog.records if "were seen in training" in r.getMessage()]
        assert [r.levelno for r in seen] == [level], (split, seen)


def test_held_out_subset_and_fresh_data_are_external_test_sets(tmp_path: Path):
    index = _data(tmp_path / "run")
    spec = _spec(index)
    held = choose_split(index.subset(index.samples[9:]), spec, "test")
    assert held.rule == "external" and len(held.samples) == 3 and held.seen["any"] == 0
    assert "3 of the scored images are the run's own held-out test images" in held.notes
    fresh = _data(tmp_path / "fresh", offset=3)  # other pixel values, same file names
    sel = choose_split(fresh, spec, "test")
    assert sel.rule == "external" and len(sel.samples) == 12 and sel.seen["any"] == 0


def test_split_column_is_used_unless_it_holds_seen_images(tmp_path: Path):
    index = _data(tmp_path / "run")
    spec = _spec(index)
    fresh = _data(tmp_path / "fresh", offset=3, column=True)
    sel = choose_split(fresh, spec, "test")
    assert sel.rule == "column" and [s.path.name for s in sel.samples] == ["008.png", "009.png", "010.png", "011.png"]
    # The run's images with a column whose test rows are training images: refused.
    bad = DatasetIndex([Sample(s.path, s.label, s.patient, {"official_split": "test" if i < 4 else "train"})
                        for i, s in enumerate(index.samples[:10])], CLASSES, "csv", index.root)
    with pytest.raises(DataError, match="split column's test rows include 4 image"):
        choose_split(bad, spec, "test")


def test_record_beats_the_column_for_a_fold_split(tmp_path: Path):
    # The run held out images 8-11; the data's column says 0-3 are test (a patient-kfold run).
    index = _data(tmp_path)
    spec = _spec(index, scheme="patient-kfold")
    col = DatasetIndex([Sample(s.path, s.label, s.patient, {"official_split": "test" if i < 4 else "train"})
                        for i, s in enumerate(index.samples)], CLASSES, "csv", index.root)
    sel = choose_split(col, spec, "test")
    assert sel.rule == "record" and {s.path.name for s in sel.samples} == {"008.png", "009.png", "010.png", "011.png"}


def test_duplicate_of_a_training_image_is_left_out_of_the_test_split(tmp_path: Path):
    index = _data(tmp_path)
    shutil.copy(index.samples[0].path, index.samples[11].path)  # test image 11 == train image 0
    sel = choose_split(index, _spec(index), "test")
    assert sel.rule == "record" and len(sel.samples) == 3 and sel.seen["any"] == 0
    assert any("duplicates" in n for n in sel.notes)


def test_old_model_without_record(tmp_path: Path):
    index = _data(tmp_path)
    spec = _spec(index, record=False)
    with pytest.raises(DataError, match="no training record.*--split all"):
        select_split(index, spec, "test")
    sel = choose_split(index, spec, "all")
    assert sel.seen is None and sel.summary()["statement"] == "unknown: the model file has no training record"
    col = _data(tmp_path / "col", column=True)
    sel = choose_split(col, spec, "test")
    assert sel.rule == "column" and len(sel.samples) == 4 and sel.seen is None
    with pytest.raises(UsageError, match="choose one of"):
        choose_split(index, spec, "holdout")


def test_image_level_split_says_patients_leak(tmp_path: Path):
    s = _data(tmp_path).samples
    leaky = DatasetIndex([*s[:8], Sample(s[8].path, s[8].label, "0"), *s[9:]], CLASSES, "csv", tmp_path)
    sel = choose_split(leaky, _spec(leaky, scheme="image-8020"), "test")
    assert sel.rule == "record" and sel.seen["any"] == 0 and sel.patients_seen == 1
    assert any("patients leak" in n for n in sel.notes)
    assert choose_split(_data(tmp_path / "b"), _spec(_data(tmp_path / "b")), "test").patients_seen == 0


def _textured(path: Path, seed: int) -> Path:
    """A 96x80 grey image with structure (a uniform image has no dHash to speak of)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:80, 0:96]
    img = 128 + 60 * np.sin(x / (4 + seed) + seed) * np.cos(y / (5 + seed)) + rng.normal(0, 6, (80, 96))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.clip(0, 255).astype("uint8")).save(path)
    return path


def _dicom_wrapper(png: Path, out: Path) -> Path:
    """The PNG's grey pixels as an 8-bit MONOCHROME2 Secondary Capture (no window)."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    px = np.asarray(Image.open(png).convert("L"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(out), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "OT"
    ds.Rows, ds.Columns = px.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = px.tobytes()
    ds.save_as(out, enforce_file_format=True)
    return out


def _textured_model(root: Path) -> tuple[DatasetIndex, ModelSpec]:
    samples = [Sample(_textured(root / "img" / f"{i:03d}.png", i), i % 2, str(i // 2)) for i in range(12)]
    index = DatasetIndex(samples, CLASSES, "csv", root)
    return index, _spec(index)


def test_lossless_resave_and_dicom_wrapper_of_a_training_image_are_refused_like_a_byte_copy(tmp_path: Path):
    index, spec = _textured_model(tmp_path / "run")
    train_png = index.samples[0].path
    ext = tmp_path / "external"
    ext.mkdir()
    Image.open(train_png).save(ext / "resaved.tif")  # same pixels, other bytes
    _dicom_wrapper(train_png, ext / "wrapped.dcm")
    _textured(ext / "new.png", 99)
    for copy in (ext / "resaved.tif", ext / "wrapped.dcm"):
        assert image_id(copy) != image_id(train_png)  # the bytes differ: only the pixels can tell
        data = DatasetIndex([Sample(copy, 0), Sample(ext / "new.png", 1)], CLASSES, "folder", ext)
        with pytest.raises(DataError, match="train"):
            choose_split(data, spec, "test")
        sel = choose_split(data, spec, "all")
        assert sel.seen["train"] == 1 and sel.seen["any"] == 1 and "decoded-pixel hash" in sel.seen_text()


def test_jpeg_and_resized_copies_are_counted_as_near_duplicates_not_refused(tmp_path: Path):
    index, spec = _textured_model(tmp_path / "run")
    ext = tmp_path / "external"
    ext.mkdir()
    Image.open(index.samples[1].path).save(ext / "q95.jpg", quality=95)
    im = Image.open(index.samples[6].path)  # a validation image
    im.resize((im.width - 1, im.height - 1), Image.Resampling.BILINEAR).save(ext / "smaller.png")
    _textured(ext / "new.png", 99)
    data = DatasetIndex([Sample(ext / n, 0) for n in ("q95.jpg", "smaller.png", "new.png")], CLASSES, "folder", ext)
    sel = choose_split(data, spec, "test")
    assert sel.seen["any"] == 0 and sel.near_duplicates == 2
    assert "2 more look like near duplicates" in sel.seen_text()
    assert sel.summary()["near_duplicates"] == 2


def test_a_version_1_record_still_reads_and_says_what_it_checked(tmp_path: Path):
    index, spec = _textured_model(tmp_path / "run")
    raw = dict(spec.training["images"], version=1)
    for part in ("train", "val", "test"):
        raw[part] = {k: v for k, v in raw[part].items() if k not in ("pixels", "near")}
    old = ModelSpec("m", "planes", CLASSES, {}, training={**spec.training, "images": raw})
    sel = choose_split(index, old, "test")
    assert sel.near_duplicates is None and "version 1" in sel.seen_text()
    assert {s.path for s in sel.samples} == {s.path for s in index.samples[8:12]}
