"""ModelSpec: the small typed, versioned record that travels inside every checkpoint and ONNX file.

Every command that loads a model reads the class names, preprocessing, temperature, abstain
threshold and heat-map settings from here, so none of them is ever redeclared as a flag.

Versioning (``format_version``, "MAJOR.MINOR"): a reader accepts
- an older version, through :func:`migrate` (records written before versioning are "1.0");
- a newer MINOR version of its own MAJOR, with one warning naming the fields it does not know
  (they are dropped), so an edge box with an older runtime still loads a newer release's export;
- nothing with a newer MAJOR version (a clear error saying which reader is needed).
Unknown fields in a record of this reader's own (or an older) version are an error: they can
only come from a typo or a hand edit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fetalplanes.core.errors import UserError

log = logging.getLogger(__name__)

# 1.0: the unversioned records of fetalplanes <= 0.1 (heat-map settings under training["explain"]).
# 1.1: ``format_version`` and a top-level ``explain`` section.
# 1.2: CBAM's spatial gate pads with 'replicate' by default; older CBAM models get their
#      'zeros' padding written into ``architecture.attention_kwargs`` (same weights, old maths).
# 1.3: CBAM's spatial gate has a BatchNorm by default (``spatial_norm='batch'``); older CBAM
#      models get ``spatial_norm='none'`` written in (their weights have no such layer).
# 1.4: an ``ood`` section: the out-of-distribution gate's score, threshold and acceptance
#      (``core.ood``); its fitted statistics travel beside the spec in the model file. Older
#      records get ``ood = {}``: no OOD gate, and every answer says so.
SPEC_FORMAT_VERSION = "1.4"

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
            raise SpecError(f"preprocessing.image_size must be >= 16, got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise SpecError("preprocessing.mean and .std must each have 3 values")
        if any(s <= 0 for s in self.std):
            raise SpecError(f"preprocessing.std must be positive, got {self.std}")
        if self.channels != 3:
            raise SpecError(f"preprocessing.channels must be 3, got {self.channels}")
        if self.resize not in ("squash",):
            raise SpecError(f"unknown preprocessing.resize {self.resize!r}; choose one of ['squash']")

    @classmethod
    def from_dict(cls, d: dict[str, Any], lenient: bool = False) -> "Preprocessing":
        d = _known_keys(cls, d, "preprocessing", lenient)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild, feed and interpret a trained model (see module docstring)."""

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
    # Default heat map (method, layer, aug_smooth): ``core.cam_methods.HeatMapSettings``.
    explain: dict[str, Any] = field(default_factory=dict)
    # The OOD gate (``core.ood.fit_stats`` summary: score, threshold, acceptance, stats_sha256 ...);
    # empty = no gate. The arrays themselves are stored next to the spec (``runtime.artifact``).
    ood: dict[str, Any] = field(default_factory=dict)
    format_version: str = SPEC_FORMAT_VERSION

    def __post_init__(self) -> None:
        if not self.class_names:
            raise SpecError("ModelSpec.class_names must not be empty")
        if len(set(self.class_names)) != len(self.class_names):
            raise SpecError(f"ModelSpec.class_names has duplicates: {list(self.class_names)}")
        if not self.temperature > 0:
            raise SpecError(f"ModelSpec.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.abstain_threshold <= 1.0:
            raise SpecError(f"ModelSpec.abstain_threshold must be in [0, 1], got {self.abstain_threshold}")
        if not isinstance(self.ood, dict):
            raise SpecError(f"ModelSpec.ood must be a mapping, got {type(self.ood).__name__}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_ood_gate(self) -> bool:
        """True when the model file carries fitted OOD statistics and a threshold."""
        return bool(self.ood.get("threshold") is not None and self.ood.get("stats_sha256"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        d["preprocessing"]["mean"] = list(self.preprocessing.mean)
        d["preprocessing"]["std"] = list(self.preprocessing.std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model spec") -> "ModelSpec":
        """Read a stored record of any supported version (see module docstring).

        Raises ``SpecError`` (a ValueError) naming ``source`` for a newer major version, unknown
        fields of a known version, missing required fields or invalid values.
        """
        if not isinstance(d, dict):
            raise SpecError(f"{source}: expected a mapping, got {type(d).__name__}")
        d, lenient = migrate(d, source)
        d = _known_keys(cls, d, source, lenient)
        missing = [k for k in ("name", "task", "class_names", "architecture") if k not in d]
        if missing:
            raise SpecError(f"{source}: missing required field(s) {missing}")
        d["class_names"] = tuple(d["class_names"])
        d["format_version"] = SPEC_FORMAT_VERSION
        try:
            d["preprocessing"] = Preprocessing.from_dict(d.get("preprocessing", {}), lenient)
            return cls(**d)
        except (TypeError, ValueError) as err:
            raise SpecError(f"{source}: {err}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "model spec") -> "ModelSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError(f"{source}: the spec is not valid JSON ({err})") from None
        return cls.from_dict(data, source)

    def replace(self, **changes: Any) -> "ModelSpec":
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(changes)
        return ModelSpec(**d)


class SpecError(UserError, ValueError):
    """A stored ModelSpec cannot be read, or a field value is invalid (the message names the source or field)."""


def _parse_version(text: Any, source: str) -> tuple[int, int]:
    try:
        major, minor = (int(p) for p in str(text).split("."))
        return major, minor
    except ValueError:
        raise SpecError(f"{source}: format_version {text!r} is not 'MAJOR.MINOR'") from None


def migrate(d: dict[str, Any], source: str = "model spec") -> tuple[dict[str, Any], bool]:
    """An older record brought to :data:`SPEC_FORMAT_VERSION`: (record, lenient).

    ``lenient`` is True for a newer MINOR version: its unknown fields are dropped with a warning.
    """
    d = dict(d)
    have = _parse_version(d.get("format_version", "1.0"), source)
    current = _parse_version(SPEC_FORMAT_VERSION, "reader")
    if have[0] > current[0]:
        raise SpecError(
            f"{source}: spec format {have[0]}.{have[1]} was written by a newer fetalplanes; this reader "
            f"supports up to {SPEC_FORMAT_VERSION}: upgrade fetalplanes"
        )
    if have < (1, 1):  # 1.0 -> 1.1: the explain section moves out of the training summary
        training = dict(d.get("training") or {})
        d.setdefault("explain", training.pop("explain", None) or {})
        d["training"] = training
    if have < (1, 2):
        _pin_cbam_option(d, "spatial_padding", "zeros")
    if have < (1, 3):
        _pin_cbam_option(d, "spatial_norm", "none")
    return d, have > current


def _pin_cbam_option(d: dict[str, Any], key: str, old_value: str) -> None:
    """CBAM models trained before ``key`` was a choice keep the behaviour they were trained with.

    1.1 -> 1.2 pins zero padding: the padding changes no weight, so without this an old
    checkpoint would load silently with the new default and compute a different spatial gate.
    1.2 -> 1.3 pins no spatial BatchNorm: old weights have no such layer.
    """
    arch = d.get("architecture")
    if not isinstance(arch, dict) or arch.get("attention", "cbam") != "cbam":
        return
    kwargs = dict(arch.get("attention_kwargs") or {})
    kwargs.setdefault(key, old_value)
    d["architecture"] = {**arch, "attention_kwargs": kwargs}


def _known_keys(cls: type, d: dict[str, Any], what: str, lenient: bool) -> dict[str, Any]:
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - valid)
    if unknown and not lenient:
        raise SpecError(f"{what} has unknown field(s) {unknown}; valid fields are {sorted(valid)}")
    if unknown:
        log.warning("%s written by a newer fetalplanes: ignoring unknown field(s) %s", what, unknown)
    return {k: v for k, v in d.items() if k in valid}
