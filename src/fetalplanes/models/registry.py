"""The one model registry: ``create_model(name, num_classes, pretrained=...)``.

Variants are presets, i.e. the ``model`` sections of ``configs/*.yaml`` (plain config read by
``models.presets``), never copied classes; a name that is not a preset is taken as a timm
backbone name with the default attention and head.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator

from fetalplanes.core.spec import Preprocessing
from fetalplanes.core.validation import config_error
from fetalplanes.models.presets import is_preset, preset_model


class ModelConfig(BaseModel):
    """Architecture choices the paper leaves open, each configurable (see README, Design)."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = "tf_efficientnet_lite0"
    attention: str = "cbam"
    attention_kwargs: dict[str, Any] = {}
    head_hidden: list[int] = [512, 256]
    dropout: float = 0.3
    pretrained: str = "none"
    finetune: Literal["full", "frozen", "last_k"] = "full"
    finetune_k: int = 2

    @field_validator("attention")
    @classmethod
    def _known_attention(cls, v: str) -> str:
        from fetalplanes.models.attention import ATTENTIONS

        if v not in ATTENTIONS:
            raise ValueError(f"unknown attention {v!r}; choose one of {sorted(ATTENTIONS)}")
        return v

    @field_validator("attention_kwargs")
    @classmethod
    def _known_attention_options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Checked here, where the config is read, so the error names the YAML (or variants
        # file) instead of surfacing when the model is built, after the data was read.
        from fetalplanes.models.attention import check_attention_kwargs

        if "attention" in info.data:  # else the attention itself was invalid: that error is enough
            check_attention_kwargs(info.data["attention"], v)
        return v

    @model_validator(mode="after")
    def _record_attention_defaults(self) -> "ModelConfig":
        # e.g. CBAM's spatial_padding: written out so the spec says what the model was trained
        # with (old specs get their old value from core.spec.migrate before reaching here).
        from fetalplanes.models.attention import RECORDED_DEFAULTS

        self.attention_kwargs = {**RECORDED_DEFAULTS.get(self.attention, {}), **self.attention_kwargs}
        return self

    @field_validator("dropout")
    @classmethod
    def _dropout_range(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {v}")
        return v


def resolve_config(name: str, pretrained: bool | str | os.PathLike[str] | None = None, **overrides: Any) -> ModelConfig:
    """Preset's ``model`` section (or a bare timm backbone name) + overrides -> validated ModelConfig.

    ``name``: a preset (``configs/NAME.yaml``) or, when it is none, a timm backbone name with
    the default attention and head. ``pretrained``: None keeps the preset's source, False ->
    'none', True -> the preset's source (or 'timm' for a bare backbone), a string -> that
    source or file. Raises UsageError (a ValueError) for an invalid field (the message lists the options).
    """
    row = preset_model(name) if is_preset(name) else {"backbone": name, "pretrained": "timm"}
    row.update(overrides)
    if pretrained is False:
        row["pretrained"] = "none"
    elif pretrained is not None and pretrained is not True:
        row["pretrained"] = os.fspath(pretrained)
    try:
        return ModelConfig(**row)
    except ValidationError as err:
        raise config_error(err, ModelConfig, f"model {name!r}") from None


def create_model(
    name: str, num_classes: int, pretrained: bool | str | os.PathLike[str] | None = False, **overrides: Any
):
    """Build a PlaneClassifier from a preset name (its YAML's ``model`` section) or a timm backbone name.

    ``overrides`` are ModelConfig fields (``attention="se"``, ``finetune="frozen"``...).
    """
    return build_model(resolve_config(name, pretrained, **overrides), num_classes)


def build_model(cfg: ModelConfig, num_classes: int):
    """ModelConfig -> PlaneClassifier (with its fine-tuning mode applied)."""
    from fetalplanes.models.attention import create_attention
    from fetalplanes.models.backbones import create_backbone
    from fetalplanes.models.classifier import PlaneClassifier
    from fetalplanes.models.heads import MLPHead

    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    backbone = create_backbone(cfg.backbone, cfg.pretrained)
    channels = int(backbone.num_features)
    attention = create_attention(cfg.attention, channels, **cfg.attention_kwargs)
    head = MLPHead(channels, num_classes, cfg.head_hidden, cfg.dropout)
    model = PlaneClassifier(backbone, attention, head, cfg.model_dump())
    model.set_finetune(cfg.finetune, cfg.finetune_k)
    return model


def build(cfg: ModelConfig, class_names: Sequence[str], image_size: int):
    """The one build of a model for training: ``(PlaneClassifier, Preprocessing)``.

    The model (pretrained weights loaded, fine-tuning mode applied) for ``len(class_names)``
    classes, and the preprocessing its backbone was pretrained with: mean/std from timm's
    pretrained config of that backbone, at ``image_size`` pixels. Raises ``ValueError`` for
    fewer than 2 classes.
    """
    model = build_model(cfg, len(class_names))
    return model, default_preprocessing(model, image_size)


def default_preprocessing(model, image_size: int = 224) -> Preprocessing:
    """The backbone's own normalization (e.g. Lite0 uses mean=std=0.5), at ``image_size``."""
    cfg = getattr(model.backbone, "pretrained_cfg", {}) or {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    return Preprocessing(image_size=image_size, mean=mean, std=std)
