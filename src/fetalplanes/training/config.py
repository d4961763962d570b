"""Typed training configuration, loaded from a YAML file or a preset in ``configs/`` plus overrides.

Presets are read by :mod:`fetalplanes.models.presets`, the one reader of ``configs/``.

The resolved config is written to ``RUN/config.yaml`` and into every checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from fetalplanes.core.cam_methods import HeatMapSettings
from fetalplanes.core.errors import UsageError
from fetalplanes.core.validation import config_error, yaml_problem
from fetalplanes.models import presets
from fetalplanes.models.registry import ModelConfig


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Literal["planes", "brain"] = "planes"
    image_size: int = 224
    split: Literal["official", "patient-kfold", "image-8020"] = "official"
    val_fraction: float = 0.15
    fold: int = 0
    n_folds: int = 5
    balance: Literal["loss", "sampler", "none"] = "loss"
    augment: float = 1.0  # strength of the training augmentation (data.augment.AUGMENT ranges)
    cache_images: bool = True
    num_workers: int = 2
    # How training images reach the model: "workers" (augmentation per image in loader
    # processes; the CPU path), "device" (decoded uint8 images held on the training device and
    # augmented there in batches: training.device_data), both by the one augmentation
    # (data.augment: same parameters, same ops; "workers" rounds to uint8 in between), or
    # "auto" ("device" when training on a CUDA GPU, else "workers"). fit writes the resolved
    # choice into RUN/config.yaml.
    loader: Literal["auto", "workers", "device"] = "auto"
    skip_bad: bool = False


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr: float = 1e-3
    backbone_lr_mult: float = 0.2
    weight_decay: float = 0.02
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    batch_size: int = 32
    max_epochs: int = 30

    @field_validator("lr", "batch_size", "max_epochs")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"must be > 0, got {v}")
        return v


class TrainerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    # "auto": bf16-mixed on a CUDA GPU that supports it (no loss scaler, so no host sync per
    # step), else 16-mixed on CUDA, 32-true on CPU; fit writes the resolved value to config.yaml.
    precision: str = "auto"
    deterministic: bool = False
    seed: int = 42
    patience: int = 8
    channels_last: bool = True
    log_every_n_steps: int = 10
    progress: bool = True
    limit_train_batches: float | int = 1.0
    # After training: temperature scaling + abstain threshold on the validation split (evaluation.calibration).
    calibrate: bool = True


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    # Default heat map of the model (method, layer, aug_smooth): the one schema, core.cam_methods.
    explain: HeatMapSettings = HeatMapSettings()


def resolve_config_path(config: str | Path) -> Path:
    """A YAML path, or a preset name from ``configs/`` (e.g. ``paper_lite0``); an existing file wins.

    Raises FileNotFoundError listing the presets when ``config`` is neither.
    """
    path = Path(config)
    if path.is_file():
        return path
    if presets.is_preset(config):
        return presets.preset_path(str(config))
    raise FileNotFoundError(f"config {str(config)!r} not found; give a YAML path or one of the presets {presets.list_presets()}")


def _read_config(config: str | Path) -> tuple[dict[str, Any], str]:
    """(raw mapping with ``name`` set, source for error messages)."""
    path = resolve_config_path(config)
    if not Path(config).is_file():
        return presets.load_preset(str(config)), str(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: not valid YAML ({yaml_problem(err)})") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a YAML mapping at the top level")
    raw.setdefault("name", path.stem)
    return raw, str(path)


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def load_config(config: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Load a preset/YAML and apply ``{"optim.lr": 3e-4, ...}`` overrides (None values skipped)."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if config is not None:
        raw, source = _read_config(config)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, key, value)
    try:
        return TrainConfig(**raw)
    except ValidationError as err:
        raise config_error(err, TrainConfig, source) from None


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
