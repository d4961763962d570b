"""Other collections: a labelled-folder tree, a CSV list, and auto-detection of any source.

- Folder: ``ROOT/<class name>/*.png`` (one sub-folder per class).
- CSV list: a ``.csv`` (or ``ROOT/labels.csv``) with an image column (``path``, ``image``,
  ``image_name``, ``filename`` or ``file``), a ``label`` column and optional ``patient`` and
  ``split``/``official_split`` columns; relative paths resolve against the CSV's folder, and
  names without a suffix try ``images/<name>.png`` and ``<name>.png``.
- ``load_source`` picks the reader: FETAL_PLANES_DB archive, CSV list or folder.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from fetalplanes.core.classes import classes_for_task
from fetalplanes.core.io import is_image_file
from fetalplanes.data.fetal_planes_db import DatasetFormatError, find_root, load_fetal_planes
from fetalplanes.data.records import DatasetIndex, Sample

IMAGE_COLUMNS = ("path", "image", "image_name", "filename", "file")
SPLIT_COLUMNS = ("split", "official_split")


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


def _resolve_image(base: Path, value: str) -> Path:
    p = Path(value)
    candidates = [p] if p.is_absolute() else [base / p]
    if not p.suffix:
        candidates += [base / "images" / f"{value}.png", base / f"{value}.png"]
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


def load_csv_list(csv_path: str | Path, class_names: Sequence[str] | None = None) -> DatasetIndex:
    """A CSV list of images and labels (comma-separated, header row)."""
    csv_path = Path(csv_path)
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in csv.DictReader(fh)]
    if not rows:
        raise DatasetFormatError(f"{csv_path}: no rows")
    columns = list(rows[0])
    image_col = next((c for c in IMAGE_COLUMNS if c in columns), None)
    if image_col is None or "label" not in columns:
        raise DatasetFormatError(
            f"{csv_path}: columns {columns}; expected an image column (one of {list(IMAGE_COLUMNS)}) and 'label'"
        )
    names = tuple(class_names) if class_names else tuple(sorted({r["label"] for r in rows}))
    unknown = sorted({r["label"] for r in rows} - set(names))
    if unknown:
        raise DatasetFormatError(f"{csv_path}: field 'label' has unknown value(s) {unknown}; expected {list(names)}")
    samples, missing = [], []
    for r in rows:
        path = _resolve_image(csv_path.parent, r[image_col])
        if not path.is_file():
            missing.append(r[image_col])
        meta = {k: v for k, v in r.items() if k not in (image_col, "label", "patient")}
        split = next((r[c] for c in SPLIT_COLUMNS if c in r), None)
        if split:
            meta["official_split"] = split
        samples.append(Sample(path, names.index(r["label"]), r.get("patient") or None, meta))
    if missing:
        raise DatasetFormatError(f"{csv_path}: {len(missing)} listed image(s) not found, e.g. {missing[:5]}")
    return DatasetIndex(samples, names, "csv", csv_path.parent)


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
    if path.is_dir() and (path / "labels.csv").is_file():
        return load_csv_list(path / "labels.csv", class_names or _canonical(path / "labels.csv", task_classes))
    if path.is_dir():
        subdirs = {p.name for p in path.iterdir() if p.is_dir()}
        names = class_names or (task_classes if subdirs and subdirs <= set(task_classes) else None)
        return load_folder(path, names)
    raise DatasetFormatError(
        f"{path}: not a dataset; expected a FETAL_PLANES_DB folder, a labels CSV, or class sub-folders"
    )


def _canonical(csv_path: Path, task_classes: Sequence[str]) -> Sequence[str] | None:
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        labels = {(r.get("label") or "").strip() for r in csv.DictReader(fh)}
    return task_classes if labels and labels <= set(task_classes) else None
