"""Train / validation / test splits, patient-level and leak-checked.

Schemes:
- ``official``: the dataset's own test split (FETAL_PLANES_DB ``Train == 0``) untouched;
  validation carved from the official train part by patient, stratified by class, seeded.
- ``patient-kfold``: patient-grouped, class-stratified K folds; fold ``fold`` is the test set.
- ``image-8020``: an image-level random 80:20 split that ignores patients. It exists only
  to reproduce the protocol the paper most likely used and to show the leakage effect; it
  is flagged as leaky wherever it is reported.

Model selection uses the validation split only; every patient-level scheme is checked with
``assert_no_patient_overlap`` before it is returned.

Which images a command scores (``evaluate``, ``calibrate``, ``explain --data``, ``reproduce``):
:func:`choose_split`, checked against the record of train/val/test images inside the model
file (``data.provenance``); its rule is in :func:`choose_split`'s docstring and docs/metrics.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fetalplanes.core.errors import DataError, UsageError
from fetalplanes.core.spec import ModelSpec
from fetalplanes.data.provenance import SEEN_PARTS, ImageRecord
from fetalplanes.data.records import DatasetIndex, Sample

log = logging.getLogger(__name__)

SCHEMES = ("official", "patient-kfold", "image-8020")
LEAKY_SCHEMES = ("image-8020",)


class PatientLeakageError(AssertionError):
    """A patient's images sit in two splits."""


@dataclass
class Splits:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    scheme: str
    leaky: bool = False
    info: dict = field(default_factory=dict)

    def by_name(self, name: str) -> list[Sample]:
        if name not in ("train", "val", "test"):
            raise UsageError(f"unknown split {name!r}; choose one of ['train', 'val', 'test']")
        return getattr(self, name)

    def summary(self) -> dict:
        out = {"scheme": self.scheme, "leaky": self.leaky, **self.info}
        for name in ("train", "val", "test"):
            part = self.by_name(name)
            out[name] = {"images": len(part), "patients": len({s.patient for s in part if s.patient})}
        return out


def _patient_key(s: Sample, i: int) -> str:
    # Images without a patient id are their own group: they can never leak, but they can
    # never be grouped either (documented limit of folder/CSV sources without patients).
    return s.patient if s.patient is not None else f"__image_{i}"


def assert_no_patient_overlap(splits: dict[str, list[Sample]]) -> None:
    """Raise PatientLeakageError naming the patients found in two splits."""
    names = list(splits)
    for a_i, a in enumerate(names):
        pa = {s.patient for s in splits[a] if s.patient is not None}
        for b in names[a_i + 1 :]:
            common = pa & {s.patient for s in splits[b] if s.patient is not None}
            if common:
                raise PatientLeakageError(
                    f"{len(common)} patient(s) in both {a} and {b}, e.g. {sorted(common)[:5]}"
                )


def _group_fold(samples: list[Sample], n_folds: int, fold: int, seed: int, what: str = "split") -> tuple[list[int], list[int]]:
    """Indices (rest, held-out) of one stratified, patient-grouped fold.

    Raises ``DataError`` (one line with the numbers) when the samples cannot make the folds,
    before scikit-learn is asked: see :func:`check_fold_preconditions`.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.array([s.label for s in samples])
    groups = np.array([_patient_key(s, i) for i, s in enumerate(samples)])
    n_folds = max(2, min(n_folds, len(set(groups))))
    check_fold_preconditions(samples, n_folds, what)
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    rest, held = list(cv.split(np.zeros(len(y)), y, groups))[fold % n_folds]
    return rest.tolist(), held.tolist()


def check_fold_preconditions(samples: list[Sample], n_folds: int, what: str) -> None:
    """Raise ``DataError`` unless ``samples`` can make ``n_folds`` patient-grouped, class-stratified
    folds (scikit-learn's ``StratifiedGroupKFold``): at least ``n_folds`` patients, and at least
    one class with ``n_folds`` images. The message names the numbers found and what to change."""
    groups = {_patient_key(s, i) for i, s in enumerate(samples)}
    per_class: dict[int, int] = {}
    for s in samples:
        per_class[s.label] = per_class.get(s.label, 0) + 1
    counts = ", ".join(f"class {k}: {v}" for k, v in sorted(per_class.items()))
    if len(groups) < n_folds:
        raise DataError(
            f"the {what} needs at least {n_folds} patients to make {n_folds} patient-grouped folds; "
            f"the data has {len(groups)} patient(s) ({len(samples)} images: {counts})"
        )
    if max(per_class.values(), default=0) < n_folds:
        raise DataError(
            f"the {what} makes {n_folds} patient-grouped folds, which needs at least one class with {n_folds} "
            f"images from different patients; the largest class has {max(per_class.values(), default=0)} "
            f"({counts}): add images, or raise val_fraction / lower n_folds"
        )


def _carve_val(train: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    if not 0 < val_fraction < 1:
        raise UsageError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rest, held = _group_fold(train, round(1 / val_fraction), 0, seed,
                             f"validation split (val_fraction {val_fraction} of the training part)")
    return [train[i] for i in rest], [train[i] for i in held]


def make_splits(
    index: DatasetIndex,
    scheme: str = "official",
    val_fraction: float = 0.15,
    seed: int = 0,
    fold: int = 0,
    n_folds: int = 5,
) -> Splits:
    """Split ``index`` by ``scheme``; patient-level schemes are verified leak-free."""
    samples = index.samples
    if n_folds < 2 or not 0 <= fold < n_folds:
        raise UsageError(f"n_folds must be >= 2 and fold in 0..n_folds-1, got n_folds={n_folds}, fold={fold}")
    if scheme == "official":
        official = [s.meta.get("official_split") for s in samples]
        if any(v is None for v in official):
            log.info("%s has no official split column; using a patient-grouped 5-fold test split", index.root)
            rest, held = _group_fold(samples, n_folds, 0, seed, f"{index.root}: test split ({n_folds} folds, no split column)")
            train_all, test = [samples[i] for i in rest], [samples[i] for i in held]
        else:
            train_all = [s for s in samples if s.meta["official_split"] == "train"]
            test = [s for s in samples if s.meta["official_split"] == "test"]
    elif scheme == "patient-kfold":
        rest, held = _group_fold(samples, n_folds, fold, seed, f"{index.root}: patient-kfold split")
        train_all, test = [samples[i] for i in rest], [samples[i] for i in held]
    elif scheme == "image-8020":
        return _image_split(samples, val_fraction, seed)
    else:
        raise UsageError(f"unknown split scheme {scheme!r}; choose one of {list(SCHEMES)}")
    if not train_all:
        raise DataError(f"{index.root}: the {scheme} split leaves no training images")
    train, val = _carve_val(train_all, val_fraction, seed)
    assert_no_patient_overlap({"train": train, "val": val, "test": test})
    info = {"val_fraction": val_fraction, "seed": seed}
    if scheme == "patient-kfold":
        info.update(fold=fold, n_folds=n_folds)
    return Splits(train, val, test, scheme, False, info)


def _image_split(samples: list[Sample], val_fraction: float, seed: int) -> Splits:
    """The leaky image-level 80:20 split (validation carved from the 80 at image level too)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(samples))
    n_test = int(round(0.2 * len(samples)))
    test = [samples[i] for i in order[:n_test]]
    rest = [samples[i] for i in order[n_test:]]
    n_val = int(round(val_fraction * len(rest)))
    log.warning("image-8020 split: patients are shared between train and test (leaky, paper protocol only)")
    return Splits(rest[n_val:], rest[:n_val], test, "image-8020", True, {"val_fraction": val_fraction, "seed": seed})


SPLIT_CHOICES = ("test", "val", "train", "all")

RULES = {
    "record": "the {split} images the run recorded in the model file (matched by content hash)",
    "column": "the data's own split column ({split} rows)",
    "external": "an external test set: none of its images is in the model's training or validation record",
    "re-derived": "the run's {split} split re-derived from the data with the run's split recipe (scheme, seed)",
    "all": "every image of the data (--split all, asked for explicitly)",
}


@dataclass
class Selection:
    """The images a command scores, the rule that chose them, and whether the model saw any.

    ``seen``: among the scored images, how many are in the model's train / val record
    (``{"train": k, "val": k, "any": k}``, by content hash); None when the model file has no record.
    """

    samples: list[Sample]
    split: str
    rule: str
    n_data: int
    seen: dict[str, int] | None
    notes: list[str] = field(default_factory=list)
    patients_seen: int | None = None
    checks: str = "file-content hash"
    near_duplicates: int | None = None
    where: dict[Path, frozenset[str]] = field(default_factory=dict, repr=False)  # record splits per path
    near: set[Path] = field(default_factory=set, repr=False)  # paths that are near duplicates

    def keep(self, samples: list[Sample]) -> None:
        """Narrow the selection to ``samples`` (those actually scored, e.g. after ``--skip-bad``):
        the counts and the statement then speak of these images only."""
        self.samples = list(samples)
        if self.seen is not None:
            marks = [self.where.get(s.path, frozenset()) for s in self.samples]
            self.seen = {p: sum(p in m for m in marks) for p in SEEN_PARTS}
            self.seen["any"] = sum(bool(m & set(SEEN_PARTS)) for m in marks)
        if self.near_duplicates is not None:
            self.near_duplicates = sum(s.path in self.near for s in self.samples)

    def seen_text(self) -> str:
        """The one-sentence answer to "did the model see any of these images?"."""
        n = len(self.samples)
        if self.seen is None:
            return "unknown: the model file has no training record"
        how = f"checked by {self.checks} against the model's training record"
        near = ""
        if self.near_duplicates:
            near = (f"; {self.near_duplicates} more look like near duplicates of training or validation images "
                    "(JPEG or resized copies?)")
        if self.seen["any"] == 0:
            return f"none of the {n} scored images was seen in training or validation ({how}){near}"
        return (f"{self.seen['any']} of the {n} scored images were seen in training ({self.seen['train']}) or "
                f"validation ({self.seen['val']}) ({how}){near}")

    def summary(self) -> dict[str, Any]:
        """The JSON record every report carries (metrics.json, calibration.json, ...)."""
        return {
            "split": self.split, "rule": self.rule, "rule_text": RULES[self.rule].format(split=self.split),
            "n_data": self.n_data, "n_scored": len(self.samples),
            "seen_in_training_or_validation": None if self.seen is None else self.seen["any"],
            "seen_train": None if self.seen is None else self.seen["train"],
            "seen_val": None if self.seen is None else self.seen["val"],
            "patients_seen": self.patients_seen, "near_duplicates": self.near_duplicates, "checks": self.checks,
            "statement": self.seen_text(), "notes": list(self.notes),
        }


def selection_lines(sel: dict[str, Any]) -> list[str]:
    """report.md bullet lines for a :meth:`Selection.summary` (which images, seen or not)."""
    seen = sel.get("seen_in_training_or_validation")
    warn = "**WARNING**: " if seen or sel.get("near_duplicates") else ""
    lines = [f"- scored: {sel['n_scored']} of the {sel['n_data']} images of the data: {sel['rule_text']}",
             f"- seen in training or validation: {warn}{sel['statement']}"]
    return lines + [f"- {note}" for note in sel.get("notes", [])]


def choose_split(index: DatasetIndex, spec: ModelSpec, split: str) -> Selection:
    """The samples of ``split`` ('test', 'val', 'train' or 'all') of ``index`` for the model ``spec``.

    Rule, in order (``rule`` of the result):
    - ``all``: every image; the result counts how many the model saw (a warning is logged).
    - ``record``: the data holds every image the run recorded for ``split`` (it is the run's own
      data, in any layout): exactly those images. For 'test', a held-out image whose content is
      also in train/val (a duplicate file) is left out. Checked before the split column because
      a run split by folds or by image (``patient-kfold``, ``image-8020``) held out other images
      than the data's column.
    - ``column``: 'test' on data with its own split column (FETAL_PLANES_DB ``Train``, a CSV
      ``split``): its test rows.
    - ``external``: 'test' on data without a split column none of whose images the model saw in
      training or validation: every image.
    - ``re-derived``: 'val'/'train' otherwise (and 'test' of a fold/image split for a model
      without a record): the run's recipe (scheme, seed, fold) re-applied to the data.

    Raises ``DataError`` (one line) for 'test' when the chosen images include any the model was
    trained or validated on, or when the data has no split column and the model file has no
    training record (written before fetalplanes recorded one): ``--split all`` must then be
    asked for explicitly. Raises ``UsageError`` for an unknown ``split``.
    """
    if split not in SPLIT_CHOICES:
        raise UsageError(f"unknown split {split!r}; choose one of {list(SPLIT_CHOICES)}")
    record = ImageRecord.from_training(spec.training)
    member = record.membership(index.samples, index.root) if record is not None else None
    where = {id(s): m for s, (m, _) in zip(index.samples, member)} if member is not None else {}
    samples, rule, notes = _pick(index, spec, split, record, member)
    seen_samples = [s for s in samples if where.get(id(s), frozenset()) & set(SEEN_PARTS)]
    if split == "test" and seen_samples:
        raise DataError(_overlap_message(index, seen_samples, where, rule))
    seen = None
    if record is not None:
        seen = {p: sum(p in where[id(s)] for s in samples) for p in SEEN_PARTS}
        seen["any"] = len(seen_samples)
    sel = Selection(samples, split, rule, len(index), seen, notes)
    if record is not None:
        sel.checks = record.checks
        sel.where = {s.path: where[id(s)] for s in samples}
        unseen = [s for s in samples if not where[id(s)] & set(SEEN_PARTS)]
        sel.near = {unseen[i].path for i in record.near_duplicates(unseen)}
        sel.near_duplicates = len(sel.near) if record.version >= 2 else None
        if sel.near_duplicates:
            log.warning("%s: %d scored image(s) are near duplicates of training or validation images",
                        index.root, sel.near_duplicates)
    if record is not None and rule == "record" and split == "test":
        sel.patients_seen = len(record.patients_seen({s.patient for s in samples if s.patient is not None}))
        if sel.patients_seen:
            sel.notes.append(f"{sel.patients_seen} scored patient(s) also have images in training or validation "
                             "(an image-level split: patients leak)")
    if seen and seen["any"]:
        # Asked-for train/val images are seen by definition (the OOD gate is fit on them,
        # calibration on val): said at INFO; anything else that scores seen images is a warning.
        (log.info if split in SEEN_PARTS else log.warning)("%s: %s", index.root, sel.seen_text())
    log.info("%s: scoring %d of %d images: %s", index.root, len(samples), len(index), RULES[rule].format(split=split))
    return sel


def select_split(index: DatasetIndex, spec: ModelSpec, split: str) -> list[Sample]:
    """The samples of :func:`choose_split` (same rule and errors)."""
    return choose_split(index, spec, split).samples


def _has_column(index: DatasetIndex) -> bool:
    return bool(index.samples) and all("official_split" in s.meta for s in index.samples)


def _pick(index: DatasetIndex, spec: ModelSpec, split: str, record: ImageRecord | None,
          member: list[tuple[frozenset[str], str]] | None) -> tuple[list[Sample], str, list[str]]:
    """(samples, rule, notes) by :func:`choose_split`'s rule; the seen check is the caller's."""
    if split == "all":
        return list(index.samples), "all", []
    if record is not None and member is not None and record.covers(split, {k for _, k in member}):
        return _from_record(index, split, member)
    scheme = spec.training.get("splits", {}).get("scheme", "official")
    if split != "test" or (record is None and scheme != "official" and _has_column(index)):
        return _rederive(index, spec, split), "re-derived", []
    if _has_column(index):
        return [s for s in index.samples if s.meta["official_split"] == "test"], "column", []
    if record is None or member is None:
        raise DataError(
            f"{index.root}: --split test refused: the data has no split column and the model file has no training "
            "record (written by an older fetalplanes), so which images it was trained on is unknown; score the data "
            "it was trained on with a split column, or ask for --split all explicitly to score every image")
    held = sum("test" in m for m, _ in member)
    notes = [f"{held} of the scored images are the run's own held-out test images"] if held else []
    return list(index.samples), "external", notes


def _from_record(index: DatasetIndex, split: str,
                 member: list[tuple[frozenset[str], str]]) -> tuple[list[Sample], str, list[str]]:
    picked = [s for s, (m, _) in zip(index.samples, member) if split in m]
    notes, dupes = [], []
    if split == "test":
        # A file whose content is in test and in train/val (a duplicate in the data) was trained on.
        dupes = [s for s, (m, _) in zip(index.samples, member) if split in m and m & set(SEEN_PARTS)]
        picked = [s for s, (m, _) in zip(index.samples, member) if split in m and not m & set(SEEN_PARTS)]
    if dupes:
        notes.append(f"{len(dupes)} held-out test image(s) left out: the same file content is also in training "
                     f"or validation (duplicates), e.g. {[d.path.name for d in dupes[:3]]}")
    left = len(index) - len(picked) - len(dupes)
    if left:
        notes.append(f"{left} other image(s) of the data are not in the run's {split} split and were left out")
    return picked, "record", notes


def _overlap_message(index: DatasetIndex, seen: list[Sample], where: dict[int, frozenset[str]], rule: str) -> str:
    n_train = sum("train" in where[id(s)] for s in seen)
    n_val = sum("val" in where[id(s)] for s in seen)
    what = "its split column's test rows include" if rule == "column" else "the data holds"
    return (f"{index.root}: --split test refused: {what} {len(seen)} image(s) this model was trained ({n_train}) or "
            f"validated ({n_val}) on (content hash against the model's training record), e.g. "
            f"{[s.path.name for s in seen[:3]]}; test only images the model never saw (the run's own data set, whose "
            "held-out test split is then scored, or data it never saw), or ask for --split all explicitly "
            "(its report counts the seen images)")


def _rederive(index: DatasetIndex, spec: ModelSpec, split: str) -> list[Sample]:
    """Split ``split`` of ``index`` by the recipe the run recorded (scheme, val fraction, seed, fold)."""
    info = spec.training.get("splits", {})
    splits = make_splits(
        index,
        info.get("scheme", "official"),
        info.get("val_fraction", 0.15),
        info.get("seed", spec.training.get("seed", 0)),
        info.get("fold", 0),
        info.get("n_folds", 5),
    )
    return splits.by_name(split)
