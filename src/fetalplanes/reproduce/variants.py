"""The experiment grid of ``fetalplanes reproduce``: named variants, each a preset plus overrides.

The built-in rows live in one YAML table next to the presets,
``configs/variants/paper_table.yaml``: ``name: {base: PRESET, overrides: {dotted: value},
group: ..., description: ...}``. A run's config is ``training.config.load_config(variant.base,
variant.overrides)``; no variant copies model or training code. Groups (``paper``,
``ablations``, ``baselines``, ``all``) name sets of variants. A user YAML file in the same
format (``--variants-file``) adds rows or changes built-in ones.

The paper (Sivasubramanian et al. 2024, arXiv 2410.17396) pairs EfficientNet-B0 and
EfficientNetV2-B0 with an attention block and a 3-layer perceptron head; the baselines are
the dataset paper's best model (DenseNet-169, Burgos-Artizzu et al. 2020) and a mobile model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fetalplanes.core.errors import UsageError, UserError
from fetalplanes.core.validation import yaml_problem
from fetalplanes.models.presets import is_preset, list_presets, preset_model, variants_table
from fetalplanes.training.config import load_config

# The base of a --variants-file row that names none (the paper's B0 model at 224 px, 30 epochs).
BASE_CONFIG = "paper_b0"
ROW_KEYS = ("base", "overrides", "group", "description", "tags")


@dataclass(frozen=True)
class Variant:
    """One row of the grid: a base preset, overrides on top of it, and what it tests.

    ``overrides`` is resolved: the base's ``model`` section as dotted keys, then the row's own
    ``changes``, so it names the whole model (backbone, attention, head, weights source) even
    when the run's other sections come from another config (``reproduce --config``).
    """

    name: str
    overrides: dict[str, Any]
    group: str
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    base: str = BASE_CONFIG
    changes: dict[str, Any] = field(default_factory=dict)

    @property
    def frozen(self) -> bool:
        return self.overrides.get("model.finetune") == "frozen"


def make_variant(name: str, base: str, changes: dict[str, Any], group: str, description: str = "",
                 tags: tuple[str, ...] = ()) -> Variant:
    """A row from its base (preset name or YAML path) and its own dotted overrides."""
    model = {f"model.{k}": v for k, v in _base_model(base).items()}
    return Variant(name, {**model, **changes}, group, description, tuple(tags), base, dict(changes))


def _base_model(base: str) -> dict[str, Any]:
    if is_preset(base):
        return preset_model(base)
    path = Path(base)
    if not path.is_file():
        raise UsageError(f"base {base!r} is neither a preset ({list_presets()}) nor a YAML file")
    raw = _yaml(path)
    model = raw.get("model", {}) if isinstance(raw, dict) else None
    if not isinstance(model, dict):
        raise UsageError(f"{path}: expected a training config with a 'model' mapping")
    return model


def _yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: not valid YAML ({yaml_problem(err)})") from None


def default_variants() -> dict[str, Variant]:
    """The built-in rows (paper variants, ablations, baselines) from ``configs/variants/paper_table.yaml``."""
    return _read_rows(variants_table(), {}, validate=False)


def load_variants(path: str | os.PathLike[str] | None = None) -> dict[str, Variant]:
    """Built-in rows, updated by a YAML file ``name: {base: PRESET, overrides: {...}, group: ..., description: ...}``.

    A row with a built-in name keeps that row's base, group and overrides unless it gives its
    own (its overrides are merged in); a new row without ``base`` starts from ``paper_b0``. A
    relative YAML path as ``base`` is read relative to the file. Every user row is checked as a
    training config at once, so a typo fails here rather than hours into a grid.

    Raises:
        UsageError (a ValueError): naming the file and the variant: not a mapping, unknown row keys (lists
            the valid ones), unknown base (lists the presets), or an invalid resulting config.
    """
    variants = default_variants()
    if path is None:
        return variants
    return _read_rows(Path(path), variants, validate=True)


def _read_rows(path: Path, variants: dict[str, Variant], validate: bool) -> dict[str, Variant]:
    raw = _yaml(path)
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a mapping 'name: {{base: PRESET, overrides: {{...}}, group: ...}}'")
    variants = dict(variants)
    for name, row in raw.items():
        if not isinstance(row, dict) or not isinstance(row.get("overrides") or {}, dict):
            raise UsageError(f"{path}: variant {name!r} needs a mapping with an 'overrides' mapping")
        unknown = sorted(set(row) - set(ROW_KEYS))
        if unknown:
            raise UsageError(f"{path}: variant {name!r} has unknown keys {unknown}; valid keys are {list(ROW_KEYS)}")
        old = variants.get(str(name))
        base = str(row.get("base", old.base if old else BASE_CONFIG))
        if "base" in row and not Path(base).is_absolute() and (path.parent / base).is_file():
            base = str((path.parent / base).resolve())
        try:
            variant = make_variant(
                str(name), base, {**(old.changes if old else {}), **(row.get("overrides") or {})},
                str(row.get("group", old.group if old else "custom")),
                str(row.get("description", old.description if old else "")),
                _tags(row.get("tags", old.tags if old else ())),
            )
            if validate:
                _check(variant)
        except UserError as err:
            raise UsageError(f"{path}: variant {name!r}: {err}") from None
        variants[str(name)] = variant
    return variants


def _tags(value: Any) -> tuple[str, ...]:
    return (str(value),) if isinstance(value, str) else tuple(str(t) for t in value or ())


def _check(variant: Variant) -> None:
    load_config(variant.base, variant.overrides)


def groups(variants: dict[str, Variant]) -> dict[str, list[str]]:
    """Group name -> variant names (in table order); ``all`` holds every row."""
    out: dict[str, list[str]] = {}
    for v in variants.values():
        out.setdefault(v.group, []).append(v.name)
    out["all"] = list(variants)
    return out


def select_variants(spec: str, variants: dict[str, Variant] | None = None) -> list[Variant]:
    """``'paper'`` / ``'b0_cbam,densenet169'`` / ``'ablations,mobilenetv3'`` -> ordered, unique rows."""
    variants = variants if variants is not None else default_variants()
    by_group = groups(variants)
    chosen: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        names = by_group.get(item) or ([item] if item in variants else None)
        if names is None:
            raise UsageError(
                f"--variants: unknown variant or group {item!r}; groups {sorted(by_group)}, variants {list(variants)}"
            )
        chosen += [n for n in names if n not in chosen]
    if not chosen:
        raise UsageError("--variants: no variant selected")
    return [variants[n] for n in chosen]
