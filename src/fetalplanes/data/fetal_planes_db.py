"""Reader for the FETAL_PLANES_DB archive (Burgos-Artizzu et al., Sci Rep 2020; Zenodo 3904280).

Layout: ``ROOT/FETAL_PLANES_DB_data.csv`` (``;``-separated, a trailing space after every
value and in the header ``Train ``) and ``ROOT/Images/<Image_name>.png``. The ``Train``
column is the official, patient-level split (1 = train, 0 = test).

Tasks: ``planes`` uses the 6 ``Plane`` classes; ``brain`` keeps the Fetal brain images whose
``Brain_plane`` is one of the three standard sub-planes. The 143 brain images labelled
``Other`` (a non-standard brain plane) are left out of the ``brain`` task and counted in
the index notes, because they are not a sub-plane class.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fetalplanes.core.classes import BRAIN_PLANES, classes_for_task
from fetalplanes.core.tables import TableFormatError, read_table
from fetalplanes.core.errors import UserError
from fetalplanes.data.records import DatasetIndex, Sample

log = logging.getLogger(__name__)

CSV_NAME = "FETAL_PLANES_DB_data.csv"
IMAGES_DIR = "Images"
COLUMNS = ("Image_name", "Patient_num", "Plane", "Brain_plane", "Operator", "US_Machine", "Train")


class DatasetFormatError(UserError, ValueError):
    """The data on disk is not in the expected format (message names the file and field)."""


def find_root(path: str | Path) -> Path | None:
    """The folder holding FETAL_PLANES_DB_data.csv: ``path`` itself or one level below."""
    path = Path(path)
    if path.is_file() and path.name == CSV_NAME:
        return path.parent
    if (path / CSV_NAME).is_file():
        return path
    if path.is_dir():
        for child in sorted(p for p in path.iterdir() if p.is_dir()):
            if (child / CSV_NAME).is_file():
                return child
    return None


def read_metadata(csv_path: str | Path) -> list[dict[str, str]]:
    """Rows of the official CSV, read by the one CSV rule (:mod:`fetalplanes.core.tables`: the
    shipped trailing spaces stripped, blank rows skipped); raises DatasetFormatError."""
    csv_path = Path(csv_path)
    try:
        table = read_table(csv_path)
    except TableFormatError as err:
        raise DatasetFormatError(str(err)) from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DatasetFormatError(
            f"{csv_path}: missing column(s) {missing}; expected a ';'-separated header with {list(COLUMNS)}"
        )
    return table.rows


def _official_split(row: dict[str, str], csv_path: Path) -> str:
    value = row["Train"]
    if value not in ("0", "1"):
        raise DatasetFormatError(f"{csv_path}: image {row['Image_name']}: Train must be 0 or 1, got {value!r}")
    return "train" if value == "1" else "test"


def load_fetal_planes(root: str | Path, task: str = "planes", check_images: bool = True) -> DatasetIndex:
    """Index FETAL_PLANES_DB at ``root`` for ``task`` ('planes' or 'brain')."""
    found = find_root(root)
    if found is None:
        raise DatasetFormatError(f"{root}: no {CSV_NAME} found here or one level below")
    class_names = classes_for_task(task)
    csv_path = found / CSV_NAME
    rows = read_metadata(csv_path)
    samples, unknown, excluded, missing = [], set(), 0, []
    for row in rows:
        label_name = row["Plane"] if task == "planes" else row["Brain_plane"]
        if task == "brain" and (row["Plane"] != "Fetal brain" or label_name not in BRAIN_PLANES):
            excluded += row["Plane"] == "Fetal brain"
            continue
        if label_name not in class_names:
            unknown.add(label_name)
            continue
        path = found / IMAGES_DIR / f"{row['Image_name']}.png"
        if check_images and not path.is_file():
            missing.append(path.name)
        meta = {k: row[k] for k in ("Plane", "Brain_plane", "Operator", "US_Machine")}
        meta["official_split"] = _official_split(row, csv_path)
        samples.append(Sample(path, class_names.index(label_name), row["Patient_num"], meta))
    if unknown:
        raise DatasetFormatError(f"{csv_path}: unknown {task} label(s) {sorted(unknown)}; expected {list(class_names)}")
    if missing:
        raise DatasetFormatError(
            f"{found / IMAGES_DIR}: {len(missing)} image(s) listed in {CSV_NAME} are missing, e.g. {missing[:5]}"
        )
    notes = []
    if task == "brain":
        notes.append(f"{excluded} Fetal brain image(s) with Brain_plane 'Other' excluded from the brain task")
    log.info("FETAL_PLANES_DB at %s: %d images for task %s", found, len(samples), task)
    return DatasetIndex(samples, class_names, "fetal_planes_db", found, notes)
