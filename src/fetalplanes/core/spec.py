"""ModelSpec: the small typed record that travels inside every checkpoint and exported model.

Every command that loads a model reads the class names, preprocessing, temperature and
abstain threshold from here, so none of them is ever redeclared as a flag.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input (see ``core.preprocess``)."""

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Ultrasound is grayscale; the luminance is replicated to 3 channels so that
    # ImageNet-pretrained stems are used unchanged.
    channels: int = 3
    resize: str = "squash"

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"preprocessing.image_size must be >= 16, got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("preprocessing.mean and .std must each have 3 values")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"preprocessing.std must be positive, got {self.std}")
        if self.channels != 3:
            raise ValueError(f"preprocessing.channels must be 3, got {self.channels}")
        if self.resize not in ("squash",):
            raise ValueError(f"unknown preprocessing.resize {self.resize!r}; choose one of ['squash']")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        _check_keys(cls, d, "preprocessing")
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild, feed and interpret a trained model."""

    name: str
    task: str
    class_names: tuple[str, ...]
    architecture: dict[str, Any]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    temperature: float = 1.0
    abstain_threshold: float = 0.0
    version: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.class_names:
            raise ValueError("ModelSpec.class_names must not be empty")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"ModelSpec.class_names has duplicates: {list(self.class_names)}")
        if not self.temperature > 0:
            raise ValueError(f"ModelSpec.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.abstain_threshold <= 1.0:
            raise ValueError(f"ModelSpec.abstain_threshold must be in [0, 1], got {self.abstain_threshold}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        d["preprocessing"]["mean"] = list(self.preprocessing.mean)
        d["preprocessing"]["std"] = list(self.preprocessing.std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        _check_keys(cls, d, "model spec")
        d = dict(d)
        missing = [k for k in ("name", "task", "class_names", "architecture") if k not in d]
        if missing:
            raise ValueError(f"model spec is missing required field(s) {missing}")
        d["class_names"] = tuple(d["class_names"])
        d["preprocessing"] = Preprocessing.from_dict(d.get("preprocessing", {}))
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "ModelSpec":
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(changes)
        return ModelSpec(**d)


def _check_keys(cls: type, d: dict[str, Any], what: str) -> None:
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - valid)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}; valid fields are {sorted(valid)}")
