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

A model file is data, never code (docs/deploy.md, "What is trusted"): every checkpoint, ours or
Lightning's ``last.ckpt`` on ``fit --resume``, is read by :func:`safe_load`, i.e. ``torch.load``
with ``weights_only=True`` and an allow-list (:func:`safe_globals`) of a few plain value types.
A pickle that needs any other Python object (a class, a function such as ``os.system``) is
refused before anything in it runs. Every field of the ``fetalplanes`` record is then checked
(:func:`check_record`) and the state dict is compared with the spec's architecture, built on
the ``meta`` device (no memory), before any weight is loaded.
"""

from __future__ import annotations

import logging
import pathlib
import platform
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

import fetalplanes
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
    """Library versions recorded in every checkpoint: plain strings, so the record reads with
    ``weights_only=True`` (:func:`safe_load`) and needs no allow-listed type."""
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


def safe_globals() -> list[Any]:
    """The allow-list beyond torch's own (tensors, dicts, lists, numbers, strings): plain values
    a checkpoint record may hold (paths, numpy scalars and arrays). Nothing callable."""
    multiarray = getattr(np, "_core", None) or np.core  # numpy 2 moved the module
    dtypes = [type(np.dtype(t)) for t in ("bool", "int32", "int64", "float32", "float64")]
    return [pathlib.PosixPath, pathlib.PurePosixPath, multiarray.multiarray.scalar,
            multiarray.multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


@contextmanager
def _allowed() -> Iterator[None]:
    # Scoped, not add_safe_globals(): other torch.load calls in the process keep torch's default list.
    with torch.serialization.safe_globals(safe_globals()):
        yield


def safe_load(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` with :func:`safe_globals`; ``CheckpointError``
    naming the file and the refused Python object when the pickle needs anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with _allowed(), warnings.catch_warnings():
            # A foreign pickle (e.g. protocol 4 from pickle.dump) makes torch warn before it refuses it;
            # the refusal below is the one line the user gets.
            warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt, foreign or unsafe files
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise CheckpointError(
                f"{path}: refused: the file needs the Python object {found.group(1)!r}, and a model file is read as data only "
                "(tensors, numbers, strings, lists, dicts), never run as code; use a checkpoint written "
                "by `fetalplanes train` or an .onnx from `fetalplanes export`"
            ) from None
        raise CheckpointError(
            f"{path}: cannot read as a PyTorch checkpoint ({type(err).__name__}); "
            "expected a fetalplanes .ckpt from `fetalplanes train` or an .onnx from `fetalplanes export`"
        ) from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, read as data (:func:`safe_load`) and checked (:func:`check_record`);
    ``CheckpointError`` naming the file when it is not ours."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or CKPT_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a fetalplanes checkpoint (no '{CKPT_KEY}' record); train one with `fetalplanes train`")
    check_record(ckpt, str(path))
    return ckpt


# field of the fetalplanes record -> (required, accepted types)
_RECORD_FIELDS: dict[str, tuple[bool, tuple[type, ...]]] = {
    "format": (False, (int,)), "spec": (True, (dict,)), "config": (False, (dict,)), "versions": (False, (dict,)),
}


def check_record(ckpt: dict[str, Any], source: str) -> None:
    """Check the shape of a checkpoint: ``state_dict`` maps names to tensors, the record's fields
    exist with their types (``spec`` required); ``CheckpointError`` naming the field otherwise."""
    state, record = ckpt["state_dict"], ckpt[CKPT_KEY]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{source}: 'state_dict' is {type(state).__name__}, expected a non-empty mapping of tensors")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: 'state_dict' entry {bad[0]!r} is not a named tensor; expected name -> tensor")
    if not isinstance(record, dict):
        raise CheckpointError(f"{source}: the '{CKPT_KEY}' record is {type(record).__name__}, expected a mapping "
                              f"with fields {sorted(_RECORD_FIELDS)}")
    for name, (required, types) in _RECORD_FIELDS.items():
        if name not in record:
            if required:
                raise CheckpointError(f"{source}: the '{CKPT_KEY}' record has no '{name}'; expected fields "
                                      f"{sorted(_RECORD_FIELDS)} ('spec' required)")
            continue
        value = record[name]
        if not isinstance(value, types) or isinstance(value, bool):
            raise CheckpointError(f"{source}: '{CKPT_KEY}.{name}' is {type(value).__name__}, expected "
                                  f"{' or '.join(t.__name__ for t in types)}")
    if record.get("format", CHECKPOINT_FORMAT) > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{source}: checkpoint format {record['format']} is newer than this fetalplanes reads "
                              f"(at most {CHECKPOINT_FORMAT}); upgrade fetalplanes")


def spec_of(ckpt: dict[str, Any], source: str = "checkpoint") -> ModelSpec:
    """The ModelSpec of a checkpoint dict read by :func:`read_checkpoint` (migrated if older);
    ``CheckpointError`` naming ``source`` for an invalid spec."""
    try:
        return ModelSpec.from_dict(ckpt[CKPT_KEY]["spec"], source)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - any malformed spec field is the file's fault: one line
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        prefix = "" if message.startswith(source) else f"{source}: invalid spec ({type(err).__name__}: "
        raise CheckpointError(f"{prefix}{message}{')' if prefix else ''}") from None


def model_from_checkpoint(ckpt: dict[str, Any], spec: ModelSpec, source: str = "checkpoint") -> torch.nn.Module:
    """Rebuild the architecture from the spec and load the weights (strict).

    Raises CheckpointError naming ``source`` when the spec's architecture is not a valid model config.
    """
    # Weights come from the checkpoint: never fetch pretrained weights again at load time.
    try:
        cfg = ModelConfig(**{**spec.architecture, "pretrained": "none"})
    except ValidationError as err:
        raise CheckpointError(str(config_error(err, ModelConfig, f"{source}: the spec's architecture"))) from None
    state = {k.removeprefix(STATE_PREFIX): v for k, v in ckpt["state_dict"].items() if k.startswith(STATE_PREFIX)}
    # Built once, on the meta device (no memory, no random initialisation): a spec asking for a
    # huge model, or weights of another shape, is refused before anything is allocated; then the
    # checkpoint's own tensors become the weights (assign=True), so nothing is built twice.
    try:
        with torch.device("meta"):
            model = build_model(cfg, spec.num_classes)
    except Exception as err:  # noqa: BLE001 - a spec the model registry cannot build
        raise CheckpointError(f"{source}: the spec's architecture cannot be built ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
    expected = model.state_dict()
    _check_state(state, {k: tuple(v.shape) for k, v in expected.items()}, source)
    state = _as_weights(state, expected, source)
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        # A non-persistent buffer (not in any state dict) has no value yet: build it for real.
        model = build_model(cfg, spec.num_classes)
        model.load_state_dict(state, strict=True)
    return model.eval()


def _as_weights(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors as the model's own weights: the dtype the architecture builds
    (a float64/float16 copy is cast, as ``copy_`` into a built model did), in a fresh row-major
    copy: a tensor saved from a channels-last model keeps its strides (even on size-1 dims, where
    ``is_contiguous()`` says True), takes another conv kernel when assigned as-is and changes the
    logits in the 8th digit; the copy also means no weight keeps a crafted file's larger storage
    alive or is tied to another. ``CheckpointError`` naming the tensor
    when its kind (floating point vs integer/bool) is not the one the architecture needs."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        want = expected[name].dtype
        if tensor.is_floating_point() != want.is_floating_point:
            raise CheckpointError(f"{source}: '{STATE_PREFIX}{name}' is {str(tensor.dtype).removeprefix('torch.')}, "
                                  f"expected {str(want).removeprefix('torch.')} (a checkpoint from `fetalplanes train`)")
        out[name] = tensor.detach().to(dtype=want).clone(memory_format=torch.contiguous_format)
    return out


def _check_state(state: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """One line when the weights do not fit the spec's architecture (missing, extra, other shape)."""
    missing = sorted(set(shapes) - set(state))
    extra = sorted(set(state) - set(shapes))
    wrong = sorted(k for k in set(shapes) & set(state) if tuple(state[k].shape) != shapes[k])
    if not (missing or extra or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {STATE_PREFIX}{missing[0]})")
    if extra:
        parts.append(f"{len(extra)} unexpected (e.g. {STATE_PREFIX}{extra[0]})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} of another shape (e.g. {STATE_PREFIX}{k}: {tuple(state[k].shape)}, "
                     f"the spec needs {shapes[k]})")
    raise CheckpointError(f"{source}: the state dict does not match the spec's architecture: {'; '.join(parts)}; "
                          "expected the weights the spec describes (a checkpoint from `fetalplanes train`)")


def load_model(path: str | Path) -> tuple[torch.nn.Module, ModelSpec]:
    """(model in eval mode on CPU, its ModelSpec) from a checkpoint of either training path."""
    ckpt = read_checkpoint(path)
    spec = spec_of(ckpt, str(path))
    return model_from_checkpoint(ckpt, spec, str(path)), spec



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
