"""Model files by kind: which kind a file is, and the ModelSpec stored inside it (torch-free).

Two kinds of trained-model file exist, and every command accepts both:

| kind | suffixes | written by | spec stored in |
|---|---|---|---|
| ``checkpoint`` | ``.ckpt``, ``.pt``, ``.pth`` | ``fetalplanes train`` (``models.checkpoint``) | ``ckpt["fetalplanes"]["spec"]`` |
| ``onnx`` | ``.onnx`` | ``fetalplanes export`` (``deploy.export``) | ONNX ``metadata_props["fetalplanes_spec"]`` (JSON) |

The kind is decided by the file's content (a PyTorch checkpoint is a zip or pickle; an ONNX
model is a protobuf) and, when the content cannot tell, by the suffix, so a renamed file is still
read correctly. Reading a checkpoint needs torch (imported lazily through ``models.checkpoint``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fetalplanes.core.atomic import write_bytes
from fetalplanes.core.errors import ModelFileError, ModelFileNotFound
from fetalplanes.core.ood import OODStats, OODStatsError, decode_stats
from fetalplanes.core.spec import ModelSpec, SpecError
from fetalplanes.runtime.session import load_session, session_options

SPEC_KEY = "fetalplanes_spec"
# The OOD gate's fitted statistics (``core.ood.encode_stats``), beside the spec so the spec stays small.
OOD_KEY = "fetalplanes_ood_stats"
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".ckpt", ".pt", ".pth")
ONNX_SUFFIXES: tuple[str, ...] = (".onnx",)
KINDS: tuple[str, ...] = ("checkpoint", "onnx")
ACCEPTED = "a fetalplanes checkpoint (.ckpt/.pt/.pth from `fetalplanes train`) or an ONNX model (.onnx from `fetalplanes export`)"


def detect_kind(path: str | os.PathLike[str]) -> str:
    """'checkpoint' or 'onnx' for an existing model file; ``ModelFileError`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileNotFound(f"{path}: model file not found; expected {ACCEPTED}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise ModelFileError(f"{path}: empty file; expected {ACCEPTED}")
    # torch.save writes a zip archive ("PK\x03\x04"); very old torch files are raw pickles (0x80).
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "checkpoint"
    # An ONNX ModelProto starts with field 1 (ir_version, varint): tag byte 0x08.
    if head[:1] == b"\x08":
        return "onnx"
    suffix = path.suffix.lower()
    kinds = {**{s: "checkpoint" for s in CHECKPOINT_SUFFIXES}, **{s: "onnx" for s in ONNX_SUFFIXES}}
    if suffix in kinds:
        raise ModelFileError(f"{path}: not a readable {suffix} file (unrecognised content); expected {ACCEPTED}")
    raise ModelFileError(f"{path}: unknown model file type {suffix or '(no suffix)'!r}; expected {ACCEPTED}")


def spec_to_metadata(spec: ModelSpec) -> dict[str, str]:
    """ONNX ``metadata_props`` for ``spec``: the whole spec as JSON plus flat readable keys."""
    pre = spec.preprocessing
    return {
        SPEC_KEY: spec.to_json(),
        "class_names": json.dumps(list(spec.class_names)),
        "image_size": str(pre.image_size),
        "mean": json.dumps(list(pre.mean)),
        "std": json.dumps(list(pre.std)),
        "channels": str(pre.channels),
        "task": spec.task,
        "name": spec.name,
    }


def set_onnx_metadata(model_proto: Any, spec: ModelSpec, extra: dict[str, str] | None = None) -> None:
    """Replace an ``onnx.ModelProto``'s metadata_props with ``spec`` (and ``extra`` keys), in place."""
    props = {**spec_to_metadata(spec), **(extra or {})}
    del model_proto.metadata_props[:]
    for key, value in props.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    model_proto.producer_name = "fetalplanes"
    model_proto.doc_string = f"fetalplanes {spec.task} classifier {spec.name}: {', '.join(spec.class_names)}"


def spec_from_metadata(metadata: dict[str, str], source: str = "model") -> ModelSpec:
    """The ModelSpec stored in ONNX ``metadata_props`` (migrated if older; see ``core.spec``)."""
    if SPEC_KEY not in metadata:
        raise ModelFileError(
            f"{source}: not a fetalplanes export (no '{SPEC_KEY}' metadata; found keys {sorted(metadata)}); "
            "create one with `fetalplanes export --checkpoint CKPT --out model.onnx`"
        )
    try:
        return ModelSpec.from_json(metadata[SPEC_KEY], source)
    except SpecError as err:
        raise ModelFileError(str(err)) from None


def onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """``metadata_props`` of an ONNX file, read with ONNX Runtime (no ``onnx`` package needed)."""
    # Read only: one thread and no graph optimization, nothing is run.
    session = load_session(path, options=session_options(1, opt_level="disable"))
    return dict(session.get_modelmeta().custom_metadata_map)


def read_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """The ModelSpec inside a model file of either kind."""
    if detect_kind(path) == "onnx":
        return spec_from_metadata(onnx_metadata(path), str(path))
    return _torch_checkpoint_module().read_spec(path)


def update_spec(path: str | os.PathLike[str], **changes: Any) -> ModelSpec:
    """Rewrite fields of the spec inside a model file of either kind, atomically (e.g. after
    calibration: ``temperature``, ``abstain_threshold``). ONNX files need the ``onnx`` package."""
    if detect_kind(path) == "checkpoint":
        return _torch_checkpoint_module().update_spec(path, **changes)
    import onnx

    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    spec = spec_from_metadata(meta, str(path)).replace(**changes)
    set_onnx_metadata(proto, spec, {k: v for k, v in meta.items() if k not in spec_to_metadata(spec)})
    write_bytes(Path(path), proto.SerializeToString())
    return spec


def ood_stats(spec: ModelSpec, blob: str | None, source: str = "model") -> OODStats | None:
    """The ``core.ood.OODStats`` of a model file, or None when its spec has no OOD gate.

    Raises ``ModelFileError`` when the spec names a gate but the statistics are missing, do not
    match the spec's digest, or are malformed (an untrusted file: bounded before decoding).
    """
    if not spec.has_ood_gate:
        return None
    if blob is None:
        raise ModelFileError(f"{source}: the spec has an OOD gate but the file holds no OOD statistics ('{OOD_KEY}')")
    try:
        return decode_stats(blob, source, spec.ood["stats_sha256"])
    except OODStatsError as err:
        raise ModelFileError(str(err)) from None


def write_ood(path: str | os.PathLike[str], summary: dict[str, Any], blob: str) -> ModelSpec:
    """Store fitted OOD statistics and their summary (``spec.ood``) in a model file of either kind,
    atomically. An ONNX file must have the ``features`` output (exports since spec 1.4 do)."""
    if detect_kind(path) == "checkpoint":
        return _torch_checkpoint_module().write_ood(path, summary, blob)
    import onnx

    proto = onnx.load(str(path))
    if "features" not in [o.name for o in proto.graph.output]:
        raise ModelFileError(f"{path}: this ONNX export has no 'features' output; re-export it with `fetalplanes export`")
    meta = {p.key: p.value for p in proto.metadata_props}
    spec = spec_from_metadata(meta, str(path)).replace(ood=dict(summary))
    extra = {k: v for k, v in meta.items() if k not in spec_to_metadata(spec)}
    extra[OOD_KEY] = blob
    set_onnx_metadata(proto, spec, extra)
    write_bytes(Path(path), proto.SerializeToString())
    return spec


def _torch_checkpoint_module() -> Any:
    try:
        from fetalplanes.models import checkpoint
    except ImportError as err:
        raise ModelFileError(
            f"reading a PyTorch checkpoint needs torch ({err}); install `fetalplanes[train]`, "
            "or use the ONNX file from `fetalplanes export`"
        ) from None
    return checkpoint
