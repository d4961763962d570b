"""Patient-level splits (and the flagged leaky one), folder and CSV sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fetalplanes.core.errors import DataError
from fetalplanes.data.records import DatasetIndex, Sample
from fetalplanes.data.sources import load_csv_list, load_folder, load_source
from fetalplanes.data.splits import PatientLeakageError, assert_no_patient_overlap, make_splits


def fake_index(n_patients: int = 40, per_patient: int = 5, n_classes: int = 3, split: bool = True) -> DatasetIndex:
    rng = np.random.default_rng(0)
    samples = []
    for p in range(n_patients):
        for j in range(per_patient):
            meta = {"official_split": "test" if p % 4 == 0 else "train"} if split else {}
            samples.append(Sample(Path(f"p{p}_{j}.png"), int(rng.integers(n_classes)), str(p), meta))
    return DatasetIndex(samples, tuple("abc"[:n_classes]), "fake", Path("."))


@pytest.mark.parametrize("scheme", ["official", "patient-kfold"])
@pytest.mark.parametrize("seed", [0, 1])
def test_patient_level_schemes_never_leak(scheme, seed):
    s = make_splits(fake_index(), scheme, val_fraction=0.2, seed=seed)
    assert not s.leaky
    assert_no_patient_overlap({"train": s.train, "val": s.val, "test": s.test})
    assert len(s.train) + len(s.val) + len(s.test) == 200


def test_official_keeps_the_official_test_set():
    idx = fake_index()
    s = make_splits(idx, "official", 0.2, 0)
    assert {x.path for x in s.test} == {x.path for x in idx.samples if x.meta["official_split"] == "test"}


def test_splits_are_seeded():
    a = make_splits(fake_index(), "official", 0.2, 3)
    b = make_splits(fake_index(), "official", 0.2, 3)
    c = make_splits(fake_index(), "official", 0.2, 4)
    assert [x.path for x in a.val] == [x.path for x in b.val]
    assert [x.path for x in a.val] != [x.path for x in c.val]


def test_kfold_folds_cover_every_patient_once():
    idx = fake_index(split=False)
    held = [make_splits(idx, "patient-kfold", 0.2, 0, fold=f, n_folds=4).test for f in range(4)]
    patients = [p for part in held for p in {s.patient for s in part}]
    assert sorted(patients) == sorted({s.patient for s in idx.samples})


def test_image_8020_is_flagged_leaky_and_does_leak():
    s = make_splits(fake_index(), "image-8020", 0.1, 0)
    assert s.leaky and s.summary()["leaky"]
    assert abs(len(s.test) - 40) <= 1
    with pytest.raises(PatientLeakageError, match="patient"):
        assert_no_patient_overlap({"train": s.train, "test": s.test})


def test_unknown_scheme_lists_choices():
    with pytest.raises(ValueError, match="choose one of"):
        make_splits(fake_index(), "random")


def test_too_few_images_per_class_for_the_validation_folds_is_one_line_with_the_numbers():
    # 6 classes x 3 images, 4 training patients: 1 / 0.2 = 5 folds clamp to 4, but no class has 4 images.
    samples = [Sample(Path(f"p{i}.png"), i % 6, str(i % 4), {"official_split": "train"}) for i in range(18)]
    idx = DatasetIndex(samples, tuple("abcdef"), "fake", Path("."))
    with pytest.raises(DataError) as err:
        make_splits(idx, "official", val_fraction=0.2)
    msg = str(err.value)
    assert "validation split" in msg and "4 patient-grouped folds" in msg and "the largest class has 3" in msg
    assert "\n" not in msg


def test_one_patient_cannot_make_patient_folds():
    samples = [Sample(Path(f"p{i}.png"), i % 2, "only", {}) for i in range(10)]
    idx = DatasetIndex(samples, tuple("ab"), "fake", Path("."))
    with pytest.raises(DataError, match=r"needs at least 2 patients .* has 1 patient"):
        make_splits(idx, "patient-kfold", n_folds=5)


@pytest.mark.parametrize(("fold", "n_folds"), [(5, 5), (-1, 5), (0, 1)])
def test_fold_outside_the_folds_is_refused_not_wrapped(fold, n_folds):
    with pytest.raises(ValueError, match="fold in 0..n_folds-1"):
        make_splits(fake_index(split=False), "patient-kfold", fold=fold, n_folds=n_folds)


def _png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (20, 16), value).save(path)


def test_folder_source_and_canonical_order(tmp_path: Path):
    for c in ("Other", "Fetal brain"):
        for i in range(2):
            _png(tmp_path / c / f"{i}.png")
    idx = load_source(tmp_path)
    assert idx.kind == "folder" and len(idx) == 4
    assert idx.class_names[1] == "Fetal brain"  # the task's canonical order, not alphabetical
    with pytest.raises(ValueError, match="not classes"):
        load_folder(tmp_path, ["Other"])


def test_csv_source_resolves_names_and_reports_missing(tmp_path: Path):
    _png(tmp_path / "images" / "a.png")
    _png(tmp_path / "images" / "b.png")
    (tmp_path / "labels.csv").write_text("image_name,label,patient,official_split\na,Other,1,test\nb,Fetal femur,2,test\n")
    idx = load_source(tmp_path)
    assert idx.kind == "csv" and [s.patient for s in idx.samples] == ["1", "2"]
    assert idx.samples[0].meta["official_split"] == "test"
    (tmp_path / "bad.csv").write_text("image_name,label\nzzz,Other\n")
    with pytest.raises(ValueError, match=r"bad.csv: 1 listed image\(s\) not found"):
        load_csv_list(tmp_path / "bad.csv")
    (tmp_path / "nolabel.csv").write_text("image_name,diagnosis\na,Other\n")
    with pytest.raises(ValueError, match="expected an image column"):
        load_csv_list(tmp_path / "nolabel.csv")


def test_shared_labels_csv_loads(shared_data: Path):
    idx = load_source(shared_data / "fetal_planes_db")
    # 59 images: 18 from the official test split, 41 from train (../shared/data/README.md).
    assert idx.kind == "csv" and len(idx) == 59
    assert sum(s.meta["official_split"] == "test" for s in idx.samples) == 18
    assert len(set(s.label for s in idx.samples)) == 6
