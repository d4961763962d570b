"""Load a trained model from its self-describing checkpoint (no Lightning needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fetalplanes.core.atomic import atomic_path
from fetalplanes.core.errors import UserError
from fetalplanes.core.spec import ModelSpec
from fetalplanes.models.registry import ModelConfig, build_model

CKPT_KEY = "fetalplanes"


class CheckpointError(UserError, ValueError):
    """The file is not a usable fetalplanes checkpoint (message names the file)."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for corrupt files
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or CKPT_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a fetalplanes checkpoint (no '{CKPT_KEY}' record); train one with `fetalplanes train`")
    return ckpt


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, ModelSpec]:
    """(model in eval mode on CPU, its ModelSpec) from a training checkpoint."""
    ckpt = read_checkpoint(path)
    spec = ModelSpec.from_dict(ckpt[CKPT_KEY]["spec"])
    # Weights come from the checkpoint: never fetch pretrained weights again at load time.
    cfg = ModelConfig(**{**spec.architecture, "pretrained": "none"})
    model = build_model(cfg, spec.num_classes)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    return model.eval(), spec


def update_spec(path: str | Path, **changes: Any) -> ModelSpec:
    """Rewrite fields of the spec stored in a checkpoint (atomically), e.g. the temperature."""
    ckpt = read_checkpoint(path)
    spec = ModelSpec.from_dict(ckpt[CKPT_KEY]["spec"]).replace(**changes)
    ckpt[CKPT_KEY]["spec"] = spec.to_dict()
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return spec
