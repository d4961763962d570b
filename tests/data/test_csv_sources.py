"""Every CSV reader shares one rule (cases/csv_blank_rows) and reads external layouts as shipped
(cases/external_csv_layout: the African fetal-planes set)."""

from __future__ import annotations

from pathlib import Path

from fetalplanes.data.fetal_planes_db import read_metadata
from fetalplanes.data.sources import load_csv_list, load_source


def test_spreadsheet_saved_list_loads_like_its_clean_twin(shared_cases: Path) -> None:
    folder = shared_cases / "csv_blank_rows"
    clean, excel = load_source(folder / "labels_control"), load_source(folder / "labels_excel")
    assert len(clean) == len(excel) == 12
    assert [(s.path.name, s.label, s.patient) for s in clean.samples] == [
        (s.path.name, s.label, s.patient) for s in excel.samples
    ]
    assert clean.class_names == excel.class_names


def test_fetal_planes_db_and_csv_list_skip_the_same_blank_rows(tmp_path: Path) -> None:
    header = "Image_name;Patient_num;Plane;Brain_plane;Operator;US_Machine;Train \r\n"
    row = "Patient00001_Plane1_1_of_1 ;1 ;Other ;Not A Brain ;Other ;Aloka ;1 \r\n"
    (tmp_path / "FETAL_PLANES_DB_data.csv").write_bytes(("\ufeff" + header + row + ";;;;;;\r\n;;;;;;\r\n").encode())
    assert read_metadata(tmp_path / "FETAL_PLANES_DB_data.csv") == [
        {"Image_name": "Patient00001_Plane1_1_of_1", "Patient_num": "1", "Plane": "Other",
         "Brain_plane": "Not A Brain", "Operator": "Other", "US_Machine": "Aloka", "Train": "1"}
    ]
    (tmp_path / "images").mkdir()
    from PIL import Image

    Image.new("L", (4, 4)).save(tmp_path / "images" / "a.png")
    (tmp_path / "list.csv").write_bytes("\ufeffimage;label;patient\r\na;Other;1\r\n;;\r\n".encode())
    assert [s.path.name for s in load_csv_list(tmp_path / "list.csv").samples] == ["a.png"]


def test_african_layout_reads_without_renaming(shared_cases: Path) -> None:
    folder = shared_cases / "external_csv_layout"
    index = load_source(folder)
    rows = (folder / "African_planes_database.csv").read_text().strip().splitlines()[1:]
    assert index.kind == "csv" and len(index) == len(rows) == 36
    assert all(s.path.is_file() and s.path.parent.name == s.meta["Center"] for s in index.samples)
    # Patient numbers repeat in every centre: a patient is (Center, Patient_num), never merged.
    patients = {s.patient for s in index.samples}
    assert len(patients) == 9 and "Algeria/1" in patients and "Egypt/1" in patients
    # Scored in the 6-plane order; the absent classes are said.
    assert index.class_names == ("Fetal abdomen", "Fetal brain", "Fetal femur", "Fetal thorax", "Maternal cervix",
                                 "Other")
    present = {c for c, n in index.class_counts().items() if n}
    assert present == {"Fetal abdomen", "Fetal brain", "Fetal femur", "Fetal thorax"}
    assert any("Maternal cervix" in note and "Other" in note for note in index.notes)
    assert {s.meta["official_split"] for s in index.samples} <= {"train", "test"}
