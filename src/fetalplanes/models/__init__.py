"""Models: timm backbones + attention refinement + MLP head, built through one registry."""

from fetalplanes.models.presets import list_presets, load_preset
from fetalplanes.models.registry import (
    ModelConfig,
    build,
    build_model,
    create_model,
    default_preprocessing,
    resolve_config,
)

__all__ = [
    "ModelConfig",
    "build",
    "build_model",
    "create_model",
    "default_preprocessing",
    "list_presets",
    "load_preset",
    "resolve_config",
]
