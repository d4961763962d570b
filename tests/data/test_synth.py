"""Tests for fetalplanes.data.synth: the synthetic (tests/demo only) FETAL_PLANES_DB-format set."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fetalplanes.data.synth import PLANE_CODES, render, synthesize

REAL_DB = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fetal_planes_db"
HEADER = b"Image_name;Patient_num;Plane;Brain_plane;Operator;US_Machine;Train \n"
PER_CLASS = 10
SIZE = (96, 80)
NAME_RE = re.compile(r"^Patient(\d{5})_Plane([1-6])_(\d+)_of_(\d+)$")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth") / "db", per_class=PER_CLASS, seed=3, image_size=SIZE)


@pytest.fixture(scope="module")
def rows(db: Path) -> list[dict[str, str]]:
    with open(db / "FETAL_PLANES_DB_data.csv", newline="", encoding="ascii") as fh:
        return list(csv.DictReader(fh, delimiter=";"))


def test_csv_byte_style(db: Path) -> None:
    data = (db / "FETAL_PLANES_DB_data.csv").read_bytes()
    assert data.startswith(HEADER)
    assert b"\r" not in data and data.endswith(b" \n")
    lines = data.split(b"\n")[:-1]
    assert len(lines) == 1 + 6 * PER_CLASS
    assert all(line.endswith(b" ") and not line.endswith(b"  ") and line.count(b";") == 6 for line in lines)


def test_csv_style_matches_real_file(db: Path) -> None:
    real = REAL_DB / "FETAL_PLANES_DB_data.csv"
    if not real.is_file():
        pytest.skip("../shared/data/fetal_planes_db is not present")
    with open(real, "rb") as fh:
        real_header, real_row = fh.readline(), fh.readline()
    ours = (db / "FETAL_PLANES_DB_data.csv").read_bytes().split(b"\n")
    assert real_header == ours[0] + b"\n" == HEADER
    style = re.compile(rb"^Patient\d{5}_Plane\d_\d+_of_\d+;\d+;[^;]+;[^;]+;[^;]+;[^;]+;[01] \n$")
    assert style.match(real_row) and style.match(ours[1] + b"\n")


def test_rows_are_consistent(rows: list[dict[str, str]]) -> None:
    assert list(rows[0]) == ["Image_name", "Patient_num", "Plane", "Brain_plane", "Operator", "US_Machine", "Train "]
    assert Counter(r["Plane"] for r in rows) == {plane: PER_CLASS for plane in PLANE_CODES}
    groups: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for r in rows:
        m = NAME_RE.match(r["Image_name"])
        assert m, r["Image_name"]
        patient, code, i, n = map(int, m.groups())
        assert patient == int(r["Patient_num"]) and code == PLANE_CODES[r["Plane"]]
        groups[(patient, code)].append((i, n))
        if r["Plane"] == "Fetal brain":
            assert r["Brain_plane"] in {"Trans-thalamic", "Trans-cerebellum", "Trans-ventricular", "Other"}
        else:
            assert r["Brain_plane"] == "Not A Brain"
        assert r["Operator"] in {"Op. 1", "Op. 2", "Op. 3", "Other"}
        assert r["US_Machine"] in {"Voluson E6", "Aloka", "Voluson S10", "Other"}
    for items in groups.values():  # i_of_n counts that patient's images of that plane
        assert sorted(items) == [(i, len(items)) for i in range(1, len(items) + 1)]
    per_patient = defaultdict(set)
    for r in rows:
        per_patient[r["Patient_num"]].add((r["Operator"], r["US_Machine"], r["Train "]))
    assert len(per_patient) == max(6, PER_CLASS // 2)
    assert all(len(v) == 1 for v in per_patient.values())  # operator, machine, split per patient
    assert max(len({r["Plane"] for r in rows if r["Patient_num"] == p}) for p in per_patient) >= 2


def test_split_by_patient(rows: list[dict[str, str]]) -> None:
    splits = defaultdict(set)
    for r in rows:
        splits[r["Patient_num"]].add(r["Train "])
    assert all(len(s) == 1 for s in splits.values())
    assert {s.pop() for s in splits.values()} == {"1 ", "0 "}
    for train in ("1 ", "0 "):
        assert {r["Plane"] for r in rows if r["Train "] == train} == set(PLANE_CODES)


def test_images_and_masks(db: Path, rows: list[dict[str, str]]) -> None:
    for r in rows:
        with Image.open(db / "Images" / f"{r['Image_name']}.png") as im, Image.open(db / "Masks" / f"{r['Image_name']}.png") as mk:
            assert im.mode == "L" and mk.mode == "L" and im.size == mk.size
            assert all(abs(got - want) <= 0.1 * want + 1 for got, want in zip(im.size, SIZE))
            mask = np.asarray(mk)
        assert set(np.unique(mask)) == {0, 255}
    assert len(list((db / "Images").iterdir())) == len(rows) == len(list((db / "Masks").iterdir()))


def test_notice_and_manifest(db: Path) -> None:
    notice = (db / "SYNTHETIC.md").read_text(encoding="utf-8")
    assert "SYNTHETIC" in notice and "tests and demos only" in notice
    manifest = json.loads((db / "synth_manifest.json").read_text(encoding="utf-8"))
    assert manifest["synthetic"] is True and "tests and demos only" in manifest["purpose"]
    assert manifest["arguments"]["seed"] == 3 and manifest["n_images"] == 6 * PER_CLASS
    assert manifest["class_counts"] == {plane: PER_CLASS for plane in PLANE_CODES}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic(tmp_path: Path) -> None:
    kw = dict(per_class=2, image_size=(64, 56))
    a = _tree(synthesize(tmp_path / "a", seed=5, **kw))
    b = _tree(synthesize(tmp_path / "b", seed=5, **kw))
    c = _tree(synthesize(tmp_path / "c", seed=6, **kw))
    assert a == b
    images = [k for k in a if k.startswith("Images")]
    assert a.keys() != c.keys() or any(a[k] != c[k] for k in images)
    assert all(a[k] != c.get(k) for k in images if k in c)


def test_refuses_non_empty_dir(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    synthesize(out, per_class=1, image_size=(48, 48))  # an empty directory is fine
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        synthesize(out, per_class=1, image_size=(48, 48))
    assert (out / "keep.txt").exists()
    synthesize(out, per_class=1, seed=2, image_size=(48, 48), overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "FETAL_PLANES_DB_data.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.parametrize("plane", sorted(PLANE_CODES))
def test_render(plane: str) -> None:
    image, mask = render(plane, np.random.default_rng(0), (80, 64))
    assert image.shape == mask.shape == (64, 80) and image.dtype == mask.dtype == np.uint8
    assert mask.any() and set(np.unique(mask)) <= {0, 255}
    assert (image == 0).mean() > 0.05  # black outside the fan


def test_render_rejects_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown plane"):
        render("Fetal heart", rng, (64, 64))
    with pytest.raises(ValueError, match="non-brain"):
        render("Fetal femur", rng, (64, 64), brain_plane="Trans-thalamic")
    with pytest.raises(ValueError, match="per_class"):
        synthesize(Path("unused"), per_class=0)


def test_structures_can_be_anywhere_so_a_centre_prior_is_near_chance() -> None:
    """Position, size and depth vary per image: the middle of the image is no shortcut."""
    from fetalplanes.explain import localization as loc

    centroids, areas, centre_hits = [], [], []
    for i in range(60):
        plane = sorted(PLANE_CODES)[i % 6]
        _, mask = render(plane, np.random.default_rng([7, i]), (96, 80))
        m = mask > 0
        ys, xs = np.nonzero(m)
        centroids.append((xs.mean() / 96, ys.mean() / 80))
        areas.append(m.mean())
        centre_hits.append(loc.pointing_hit(loc.center_prior(m.shape), m))
    c = np.array(centroids)
    assert c[:, 0].std() > 0.12 and c[:, 1].std() > 0.12  # spread across the fan, in width and depth
    assert c[:, 0].min() < 0.3 and c[:, 0].max() > 0.7 and c[:, 1].min() < 0.35 and c[:, 1].max() > 0.65
    assert np.std(areas) > 0.3 * np.mean(areas)  # sizes vary
    assert np.mean(centre_hits) < 0.35 and np.mean(centre_hits) < np.mean(areas) + 0.25
