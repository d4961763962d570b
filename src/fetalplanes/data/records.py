"""Plain records shared by every dataset reader: one Sample per image, one DatasetIndex per source."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One image: where it is, its class index, its patient and free metadata.

    ``meta`` keeps the source's columns (e.g. ``US_Machine``, ``Operator``, ``Brain_plane``,
    ``official_split``) so evaluation can break results down by them.
    """

    path: Path
    label: int
    patient: str | None = None
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem


@dataclass
class DatasetIndex:
    """The samples of one source and the class names their labels index into."""

    samples: list[Sample]
    class_names: tuple[str, ...]
    kind: str
    root: Path
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(s.label for s in self.samples)
        return {c: counts.get(i, 0) for i, c in enumerate(self.class_names)}

    def summary(self) -> dict[str, Any]:
        patients = {s.patient for s in self.samples if s.patient is not None}
        return {
            "kind": self.kind,
            "root": str(self.root),
            "n_images": len(self.samples),
            "n_patients": len(patients) if patients else None,
            "class_counts": self.class_counts(),
            "notes": list(self.notes),
        }

    def subset(self, samples: list[Sample]) -> "DatasetIndex":
        return DatasetIndex(samples, self.class_names, self.kind, self.root, list(self.notes))
