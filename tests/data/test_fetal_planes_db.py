"""The FETAL_PLANES_DB reader on the official CSV and on format-identical synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest

from fetalplanes.core.classes import BRAIN_PLANES, PLANES
from fetalplanes.data.fetal_planes_db import DatasetFormatError, load_fetal_planes, read_metadata
from fetalplanes.data.sources import load_source
from fetalplanes.data.splits import assert_no_patient_overlap, make_splits


def test_official_csv_counts(shared_data: Path):
    root = shared_data / "fetal_planes_db"
    rows = read_metadata(root / "FETAL_PLANES_DB_data.csv")
    assert len(rows) == 12400
    assert len({r["Patient_num"] for r in rows}) == 1792
    index = load_fetal_planes(root, check_images=False)
    test = [s for s in index.samples if s.meta["official_split"] == "test"]
    assert len(index) == 12400 and len(test) == 5271
    assert set(index.class_names) == set(PLANES)


def test_official_split_has_no_patient_overlap(shared_data: Path):
    index = load_fetal_planes(shared_data / "fetal_planes_db", check_images=False)
    splits = make_splits(index, "official", val_fraction=0.15, seed=0)
    assert_no_patient_overlap({"train": splits.train, "val": splits.val, "test": splits.test})
    assert len(splits.test) == 5271
    assert len(splits.train) + len(splits.val) == 12400 - 5271
    # stratified: every class in validation, at a similar share as in train
    val_classes = {s.label for s in splits.val}
    assert val_classes == set(range(6))
    assert 0.10 < len(splits.val) / 7129 < 0.20


def test_brain_task_excludes_other_brain_plane(shared_data: Path):
    index = load_fetal_planes(shared_data / "fetal_planes_db", task="brain", check_images=False)
    assert index.class_names == BRAIN_PLANES
    assert len(index) == 1638 + 714 + 597
    assert "143" in index.notes[0]


def test_synthetic_set_reads_like_the_archive(synth_data: Path):
    index = load_source(synth_data)
    assert index.kind == "fetal_planes_db" and len(index) == 48
    assert all(s.path.is_file() for s in index.samples)
    splits = make_splits(index, "official", val_fraction=0.25, seed=0)
    assert splits.test and splits.val and splits.train
    assert all(s.meta["official_split"] == "test" for s in splits.test)


def test_missing_column_names_file_and_columns(tmp_path: Path):
    (tmp_path / "Images").mkdir()
    (tmp_path / "FETAL_PLANES_DB_data.csv").write_text("Image_name;Plane \nx;Other \n")
    with pytest.raises(DatasetFormatError, match=r"FETAL_PLANES_DB_data.csv: missing column\(s\).*Patient_num"):
        load_fetal_planes(tmp_path)


def test_missing_images_are_all_reported(tmp_path: Path):
    (tmp_path / "Images").mkdir()
    header = "Image_name;Patient_num;Plane;Brain_plane;Operator;US_Machine;Train \n"
    lines = "".join(f"img{i};{i};Other;Not A Brain;Op. 1;Aloka;1 \n" for i in range(3))
    (tmp_path / "FETAL_PLANES_DB_data.csv").write_text(header + lines)
    with pytest.raises(DatasetFormatError, match=r"3 image\(s\) listed .* missing"):
        load_fetal_planes(tmp_path)


def test_bad_train_value_is_named(tmp_path: Path):
    (tmp_path / "Images").mkdir()
    header = "Image_name;Patient_num;Plane;Brain_plane;Operator;US_Machine;Train \n"
    (tmp_path / "FETAL_PLANES_DB_data.csv").write_text(header + "img;1;Other;Not A Brain;Op. 1;Aloka;yes \n")
    with pytest.raises(DatasetFormatError, match="Train must be 0 or 1"):
        load_fetal_planes(tmp_path, check_images=False)
