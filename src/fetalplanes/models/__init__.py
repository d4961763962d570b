"""Models: timm backbones + attention refinement + MLP head, built through one registry."""

from fetalplanes.models.registry import (
    MODEL_PRESETS,
    ModelConfig,
    build_model,
    create_model,
    default_preprocessing,
    list_models,
    resolve_config,
)

__all__ = [
    "MODEL_PRESETS",
    "ModelConfig",
    "build_model",
    "create_model",
    "default_preprocessing",
    "list_models",
    "resolve_config",
]
