"""Synthetic FETAL_PLANES_DB-format data for ``bench_train.py``, written by parallel processes.

Kept apart from ``bench_train_parts.py`` so that the spawned writer processes import only the
data code (not torch or Lightning)."""

from __future__ import annotations

import csv
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


def _one_set(args: tuple[Path, int, int, tuple[int, int]]) -> Path:
    from fetalplanes.data.synth import synthesize

    root, per_class, seed, size = args
    # Patients of ~6 images, 85 % of them in the official training split (the real archive
    # has more training than test images per run than synth's default 60 %).
    return synthesize(root, per_class=per_class, seed=seed, n_patients=max(2, per_class), image_size=size,
                      train_fraction=0.85, overwrite=True)


def build_synthetic(root: Path, per_class: int, sets: int, size: tuple[int, int]) -> tuple[Path, dict[str, Any]]:
    """``sets`` synthetic FETAL_PLANES_DB-format sets written by parallel processes, joined into
    one CSV list (site = set, so patients never merge across sets). Returns (CSV, info)."""
    from fetalplanes.data.sources import load_source

    root.mkdir(parents=True, exist_ok=True)
    each = max(1, per_class // sets)
    jobs = [(root / f"set{k}", each, 1000 + k, size) for k in range(sets)]
    with ProcessPoolExecutor(min(sets, mp.cpu_count()), mp_context=mp.get_context("spawn")) as pool:
        folders = list(pool.map(_one_set, jobs))
    listing = root / "all.csv"
    with listing.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["path", "label", "patient", "site", "split"])
        for k, folder in enumerate(folders):
            index = load_source(folder)
            for s in index.samples:
                out.writerow([s.path.relative_to(root), index.class_names[s.label], s.patient, f"set{k}",
                              s.meta.get("official_split", "")])
    return listing, {"source": str(listing), "synthetic": True, "sets": sets, "per_class": each * sets,
                     "image_wh": list(size)}
