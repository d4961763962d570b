"""The one preset table: reading ``configs/*.yaml`` (torch-free, nothing done at import).

Every named preset is one YAML file in the package's ``configs/`` folder (the repository's
``configs/`` links to it), holding a full training config (``model``, ``data``, ``optim``,
``trainer``, optional ``explain``). ``models.registry.create_model`` takes a preset's ``model``
section, ``training.config.load_config`` the whole file, and the ``reproduce`` variants
(``configs/variants/paper_table.yaml``) are a preset plus dotted overrides. Nothing else
defines a preset.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import yaml

from fetalplanes.core.errors import UsageError

# Sub-folders of configs/ hold tables that are not presets (the reproduce variant rows).
VARIANTS_TABLE = "variants/paper_table.yaml"


class UnknownPresetError(UsageError):
    """A name that is not a preset; the message lists the valid ones."""


def preset_dir() -> Path:
    """The folder holding the preset YAML files (``fetalplanes/configs``)."""
    return Path(__file__).resolve().parents[1] / "configs"


def variants_table() -> Path:
    """The YAML table of the built-in ``reproduce`` variants (next to the presets)."""
    return preset_dir() / VARIANTS_TABLE


def list_presets() -> list[str]:
    """Sorted preset names: the stems of ``configs/*.yaml``."""
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def is_preset(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` is a preset name (not a path, not a backbone name)."""
    name = os.fspath(name)
    return "/" not in name and "\\" not in name and (preset_dir() / f"{name}.yaml").is_file()


def preset_path(name: str) -> Path:
    """``configs/NAME.yaml``.

    Raises:
        UnknownPresetError: ``name`` is not a preset (the message lists the presets).
    """
    if not is_preset(name):
        raise UnknownPresetError(f"unknown preset {name!r}; choose one of {list_presets()}")
    return preset_dir() / f"{name}.yaml"


def load_preset(name: str) -> dict[str, Any]:
    """The preset's YAML as a dict (a fresh copy: callers may change it), ``name`` filled in.

    Raises:
        UnknownPresetError: ``name`` is not a preset.
        UsageError: the file is not a YAML mapping (the message names the file).
    """
    path = preset_path(name)
    return copy.deepcopy(_read(path, path.stat().st_mtime_ns))


def preset_model(name: str) -> dict[str, Any]:
    """The preset's ``model`` section (the keys as written; ``ModelConfig`` fills the rest)."""
    section = load_preset(name).get("model") or {}
    if not isinstance(section, dict):
        raise UsageError(f"{preset_path(name)}: 'model' must be a mapping of ModelConfig fields")
    return section


@functools.lru_cache(maxsize=64)
def _read(path: Path, mtime_ns: int) -> dict[str, Any]:
    # Keyed by modification time, so an edited preset is read again in a long-lived process.
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a YAML mapping at the top level")
    raw.setdefault("name", path.stem)
    return raw
