"""The one home of a trained torch model on disk: read, write and rebuild checkpoints.

Both training paths (the Lightning loop and the frozen-backbone fast path) write their
checkpoints through :func:`checkpoint_record` / :func:`write_checkpoint`, and every command
that needs the torch model reads it through :func:`load_model`. The ONNX side of the same
record (the spec in the ONNX metadata) lives in the torch-free ``fetalplanes.runtime.artifact``;
:func:`fetalplanes.runtime.artifact.read_spec` reads the spec of either kind of file.

Layout of a checkpoint (a ``torch.save`` dict; Lightning adds its own keys beside these)::

    {"state_dict": {"model.<param>": tensor, ...},
     "fetalplanes": {"format": 2, "spec": ModelSpec.to_dict(), "config": TrainConfig dump,
                     "versions": {"fetalplanes": ..., "torch": ..., ...}}}

The spec is stored once, under ``fetalplanes``; Lightning's ``hyper_parameters`` hold only what
Lightning itself needs (class weights). Checkpoint format 1 also kept the spec and config in
``hyper_parameters``; they are ignored on read and dropped when the file is rewritten.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from fetalplanes.core.atomic import atomic_path
from fetalplanes.core.errors import UserError
from fetalplanes.core.spec import ModelSpec
from fetalplanes.core.validation import config_error
from fetalplanes.models.registry import ModelConfig, build_model

log = logging.getLogger(__name__)

CKPT_KEY = "fetalplanes"
CHECKPOINT_FORMAT = 2
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".ckpt", ".pt", ".pth")
STATE_PREFIX = "model."


class CheckpointError(UserError, ValueError):
    """The file is not a usable fetalplanes checkpoint (the message names the file)."""


def versions() -> dict[str, str]:
    """Library versions recorded in every checkpoint (plain strings: weights_only loading)."""
    import fetalplanes

    out = {"fetalplanes": fetalplanes.__version__, "torch": str(torch.__version__), "python": platform.python_version()}
    for name in ("timm", "lightning"):
        try:
            out[name] = str(__import__(name).__version__)
        except ImportError:  # pragma: no cover - both are in the [train] extra
            pass
    return out


def checkpoint_record(spec: ModelSpec, config: dict[str, Any]) -> dict[str, Any]:
    """The ``ckpt['fetalplanes']`` record: checkpoint format, spec, resolved config, versions."""
    return {"format": CHECKPOINT_FORMAT, "spec": spec.to_dict(), "config": dict(config), "versions": versions()}


def write_checkpoint(
    path: str | Path, model: torch.nn.Module, spec: ModelSpec, config: dict[str, Any], **extra: Any
) -> Path:
    """Write ``model``'s weights and its record atomically (a killed write leaves no torn file).

    ``extra`` keys (e.g. ``epoch``, ``feature_cache``) are stored beside ``state_dict``.
    """
    state = {f"{STATE_PREFIX}{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    ckpt = {"state_dict": state, CKPT_KEY: checkpoint_record(spec, config), **extra}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict; ``CheckpointError`` naming the file when it is not ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(
            f"{path}: cannot read as a PyTorch checkpoint ({type(err).__name__}); "
            "expected a fetalplanes .ckpt from `fetalplanes train` or an .onnx from `fetalplanes export`"
        ) from None
    if not isinstance(ckpt, dict) or CKPT_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a fetalplanes checkpoint (no '{CKPT_KEY}' record); train one with `fetalplanes train`")
    return ckpt


def spec_of(ckpt: dict[str, Any], source: str = "checkpoint") -> ModelSpec:
    """The ModelSpec of a checkpoint dict read by :func:`read_checkpoint` (migrated if older)."""
    return ModelSpec.from_dict(ckpt[CKPT_KEY]["spec"], source)


def model_from_checkpoint(ckpt: dict[str, Any], spec: ModelSpec, source: str = "checkpoint") -> torch.nn.Module:
    """Rebuild the architecture from the spec and load the weights (strict).

    Raises CheckpointError naming ``source`` when the spec's architecture is not a valid model config.
    """
    # Weights come from the checkpoint: never fetch pretrained weights again at load time.
    try:
        cfg = ModelConfig(**{**spec.architecture, "pretrained": "none"})
    except ValidationError as err:
        raise CheckpointError(str(config_error(err, ModelConfig, f"{source}: the spec's architecture"))) from None
    model = build_model(cfg, spec.num_classes)
    state = {k.removeprefix(STATE_PREFIX): v for k, v in ckpt["state_dict"].items() if k.startswith(STATE_PREFIX)}
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_model(path: str | Path) -> tuple[torch.nn.Module, ModelSpec]:
    """(model in eval mode on CPU, its ModelSpec) from a checkpoint of either training path."""
    ckpt = read_checkpoint(path)
    spec = spec_of(ckpt, str(path))
    return model_from_checkpoint(ckpt, spec, str(path)), spec


# The name every caller used before the model had one home.
load_checkpoint = load_model


def update_spec(path: str | Path, **changes: Any) -> ModelSpec:
    """Rewrite fields of the spec stored in a checkpoint atomically (e.g. the temperature)."""
    ckpt = read_checkpoint(path)
    spec = spec_of(ckpt, str(path)).replace(**changes)
    ckpt[CKPT_KEY]["spec"] = spec.to_dict()
    ckpt[CKPT_KEY]["format"] = CHECKPOINT_FORMAT
    # Format 1 kept a second copy in Lightning's hyper-parameters: drop it so one copy remains.
    hp = ckpt.get("hyper_parameters")
    if isinstance(hp, dict):
        hp.pop("spec", None)
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return spec


def ood_blob(ckpt: dict[str, Any]) -> str | None:
    """The stored OOD statistics text (``core.ood.encode_stats``) of a checkpoint dict, if any."""
    blob = ckpt[CKPT_KEY].get("ood_stats")
    return blob if isinstance(blob, str) else None


def write_ood(path: str | Path, summary: dict[str, Any], blob: str) -> ModelSpec:
    """Store fitted OOD statistics (``blob``) and their summary (``spec.ood``) in a checkpoint, atomically."""
    ckpt = read_checkpoint(path)
    spec = spec_of(ckpt, str(path)).replace(ood=dict(summary))
    ckpt[CKPT_KEY]["spec"] = spec.to_dict()
    ckpt[CKPT_KEY]["ood_stats"] = blob
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return spec


def read_spec(path: str | Path) -> ModelSpec:
    """The ModelSpec of a checkpoint file (without building the model)."""
    return spec_of(read_checkpoint(path), str(path))
