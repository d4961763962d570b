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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from fetalplanes.core.errors import DataError, UsageError
from fetalplanes.core.spec import ModelSpec
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


def _group_fold(samples: list[Sample], n_folds: int, fold: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices (rest, held-out) of one stratified, patient-grouped fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.array([s.label for s in samples])
    groups = np.array([_patient_key(s, i) for i, s in enumerate(samples)])
    n_groups = len(set(groups))
    n_folds = max(2, min(n_folds, n_groups))
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    rest, held = list(cv.split(np.zeros(len(y)), y, groups))[fold % n_folds]
    return rest.tolist(), held.tolist()


def _carve_val(train: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    if not 0 < val_fraction < 1:
        raise UsageError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rest, held = _group_fold(train, round(1 / val_fraction), 0, seed)
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
    if scheme == "official":
        official = [s.meta.get("official_split") for s in samples]
        if any(v is None for v in official):
            log.info("%s has no official split column; using a patient-grouped 5-fold test split", index.root)
            rest, held = _group_fold(samples, n_folds, 0, seed)
            train_all, test = [samples[i] for i in rest], [samples[i] for i in held]
        else:
            train_all = [s for s in samples if s.meta["official_split"] == "train"]
            test = [s for s in samples if s.meta["official_split"] == "test"]
    elif scheme == "patient-kfold":
        rest, held = _group_fold(samples, n_folds, fold, seed)
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


def select_split(index: DatasetIndex, spec: ModelSpec, split: str) -> list[Sample]:
    """The samples of ``split`` ('test', 'val', 'train' or 'all'), re-deriving the run's split.

    Sources without any split column (folders, plain CSV lists) are external test sets:
    'test' then means every image.
    """
    if split == "all":
        return list(index.samples)
    has_split = all("official_split" in s.meta for s in index.samples)
    info = spec.training.get("splits", {})
    scheme = info.get("scheme", "official")
    if split == "test" and not has_split:
        log.info("%s has no split column: evaluating all %d images as a test set", index.root, len(index))
        return list(index.samples)
    if split == "test" and scheme == "official":
        return [s for s in index.samples if s.meta["official_split"] == "test"]
    splits = make_splits(
        index,
        scheme,
        info.get("val_fraction", 0.15),
        info.get("seed", spec.training.get("seed", 0)),
        info.get("fold", 0),
        info.get("n_folds", 5),
    )
    return splits.by_name(split)
