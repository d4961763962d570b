"""Other collections: a labelled-folder tree, a CSV list, and auto-detection of any source.

- Folder: ``ROOT/<class name>/*.png`` (one sub-folder per class).
- CSV list: a ``.csv`` (or ``ROOT/labels.csv``, or the only ``.csv`` in ROOT) read by the one
  CSV rule (:mod:`fetalplanes.core.tables`), with column names matched case-insensitively:
  an image column (``path``, ``image``, ``image_name``, ``filename`` or ``file``), a label
  column (``label``, ``plane`` or ``class``), optional ``patient``/``patient_num``, a site
  column (``center``/``centre``/``site``/``hospital``) and ``split``/``official_split`` or a
  ``Train`` 1/0 flag. With a site column a patient is the pair (site, patient number), since
  multi-centre sets reuse patient numbers. Relative paths resolve against the CSV's folder;
  names without a suffix try ``<site>/<name>.png``, ``images/<name>.png`` and ``<name>.png``.
  So the African fetal-planes set (Sendra-Balcells et al., Sci Rep 2023; Zenodo 7540448:
  ``Patient_num,Plane,Train,Center,Filename``, images under ``<Center>/<Filename>.png``)
  reads as shipped; classes absent from a source are listed in its notes.
- ``load_source`` picks the reader: FETAL_PLANES_DB archive, CSV list or folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from fetalplanes.core.classes import classes_for_task
from fetalplanes.core.io import expand_inputs, is_image_file
from fetalplanes.core.tables import Table, TableFormatError, read_table
from fetalplanes.data.fetal_planes_db import DatasetFormatError, find_root, load_fetal_planes
from fetalplanes.data.records import DatasetIndex, Sample

IMAGE_COLUMNS = ("path", "image", "image_name", "filename", "file")
LABEL_COLUMNS = ("label", "plane", "class")
PATIENT_COLUMNS = ("patient", "patient_num", "patient_id")
SITE_COLUMNS = ("center", "centre", "site", "hospital")
SPLIT_COLUMNS = ("split", "official_split", "train")


def load_folder(root: str | Path, class_names: Sequence[str] | None = None) -> DatasetIndex:
    """One sub-folder per class; ``class_names`` fixes the label order (default: sorted)."""
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetFormatError(f"{root}: no class sub-folders; expected ROOT/<class name>/<images>")
    names = tuple(class_names) if class_names else tuple(p.name for p in folders)
    unknown = [p.name for p in folders if p.name not in names]
    if unknown:
        raise DatasetFormatError(f"{root}: sub-folder(s) {unknown} are not classes; expected {list(names)}")
    samples = [
        Sample(path, names.index(folder.name), None, {})
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file() and is_image_file(path)
    ]
    if not samples:
        raise DatasetFormatError(f"{root}: class folders hold no images")
    return DatasetIndex(samples, names, "folder", root)


def _resolve_image(base: Path, value: str, folder: str | None = None) -> Path:
    p = Path(value)
    candidates = [p] if p.is_absolute() else [base / p]
    if folder and not p.is_absolute():
        candidates.append(base / folder / p)  # external layouts: <Center>/<Filename>
    if not p.suffix:
        for root in ([base / folder] if folder else []) + [base / "images", base]:
            candidates += [root / f"{value}{suffix}" for suffix in (".png", ".jpg", ".jpeg", ".dcm")]
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


class _Columns:
    """Which header names of a CSV list play which role (case-insensitive, see the module doc)."""

    def __init__(self, table: Table) -> None:
        self.image = table.column(*IMAGE_COLUMNS)
        self.label = table.column(*LABEL_COLUMNS)
        self.patient = table.column(*PATIENT_COLUMNS)
        self.site = table.column(*SITE_COLUMNS)
        self.split = table.column(*SPLIT_COLUMNS)
        if self.image is None or self.label is None:
            raise DatasetFormatError(
                f"{table.path}: columns {table.columns}; expected an image column (one of {list(IMAGE_COLUMNS)}) "
                f"and a label column (one of {list(LABEL_COLUMNS)}), any case"
            )

    def patient_of(self, row: dict[str, str]) -> str | None:
        """The patient key; with a site column it is (site, patient): the same number in two
        centres is two patients, never merged in splits or the patient bootstrap."""
        patient = row.get(self.patient, "") if self.patient else ""
        if not patient:
            return None
        return f"{row[self.site]}/{patient}" if self.site and row.get(self.site) else patient

    def split_of(self, row: dict[str, str]) -> str | None:
        value = row.get(self.split, "") if self.split else ""
        if self.split and self.split.lower() == "train":  # a 1/0 flag, as in FETAL_PLANES_DB
            return {"1": "train", "0": "test"}.get(value, value) or None
        return value or None


def _read_list(csv_path: Path) -> Table:
    try:
        return read_table(csv_path)
    except TableFormatError as err:
        raise DatasetFormatError(str(err)) from None


def load_csv_list(csv_path: str | Path, class_names: Sequence[str] | None = None) -> DatasetIndex:
    """A CSV list of images and labels, read by the one CSV rule (``core.tables``).

    Raises DatasetFormatError naming the file for missing columns, unknown labels or
    missing images (listing the valid options).
    """
    csv_path = Path(csv_path)
    table = _read_list(csv_path)
    if not table.rows:
        raise DatasetFormatError(f"{csv_path}: no rows")
    cols = _Columns(table)
    labels = [r[cols.label] for r in table.rows]
    names = tuple(class_names) if class_names else tuple(sorted(set(labels)))
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise DatasetFormatError(
            f"{csv_path}: field {cols.label!r} has unknown value(s) {unknown}; expected {list(names)}"
        )
    samples, missing = [], []
    used = {cols.image, cols.label, cols.patient}
    for r in table.rows:
        path = _resolve_image(csv_path.parent, r[cols.image], r.get(cols.site) if cols.site else None)
        if not path.is_file():
            missing.append(r[cols.image])
        meta = {k: v for k, v in r.items() if k not in used}
        split = cols.split_of(r)
        if split:
            meta["official_split"] = split
        samples.append(Sample(path, names.index(r[cols.label]), cols.patient_of(r), meta))
    if missing:
        raise DatasetFormatError(f"{csv_path}: {len(missing)} listed image(s) not found, e.g. {missing[:5]}")
    index = DatasetIndex(samples, names, "csv", csv_path.parent)
    absent = [c for c, n in index.class_counts().items() if n == 0]
    if absent:
        index.notes.append(f"classes absent from this source: {absent} (scored on the classes present)")
    if cols.site:
        sites = sorted({r[cols.site] for r in table.rows if r[cols.site]})
        index.notes.append(f"patients are ({cols.site}, {cols.patient}) pairs; {cols.site} values: {sites}")
    return index


def load_source(path: str | Path, task: str = "planes", class_names: Sequence[str] | None = None) -> DatasetIndex:
    """Auto-detect and read a dataset: FETAL_PLANES_DB archive, CSV list, or class folders.

    For CSV lists and folders whose labels are all known task classes, the task's canonical
    class order is used so a model trained on FETAL_PLANES_DB can evaluate them directly.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    root = find_root(path)
    if root is not None and (root / "Images").is_dir():
        return load_fetal_planes(root, task)
    task_classes = classes_for_task(task)
    if path.is_file() and path.suffix.lower() == ".csv":
        return load_csv_list(path, class_names or _canonical(path, task_classes))
    listing = (path / "labels.csv" if (path / "labels.csv").is_file() else _single_csv(path)) if path.is_dir() else None
    if listing is not None:
        return load_csv_list(listing, class_names or _canonical(listing, task_classes))
    if path.is_dir():
        subdirs = {p.name for p in path.iterdir() if p.is_dir()}
        names = class_names or (task_classes if subdirs and subdirs <= set(task_classes) else None)
        return load_folder(path, names)
    raise DatasetFormatError(
        f"{path}: not a dataset; expected a FETAL_PLANES_DB folder, a labels CSV, or class sub-folders"
    )


def _canonical(csv_path: Path, task_classes: Sequence[str]) -> Sequence[str] | None:
    table = _read_list(csv_path)
    label = table.column(*LABEL_COLUMNS)
    labels = {r[label] for r in table.rows} if label else set()
    return task_classes if labels and labels <= set(task_classes) else None


def _single_csv(folder: Path) -> Path | None:
    """The one CSV list in ``folder`` (e.g. African_planes_database.csv), if there is exactly one."""
    found = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".csv" and not p.name.startswith(".")]
    return found[0] if len(found) == 1 else None


def samples_from_paths(paths: Sequence[str | os.PathLike[str]]) -> list[Sample]:
    """Unlabelled samples (label -1) for prediction on arbitrary files or folders (searched recursively)."""
    return [Sample(f, -1) for f in expand_inputs(paths)]
