"""Verified ONNX export: PyTorch model -> self-describing ``.onnx`` file.

The exported graph has one input ``image`` (N, 3, S, S) float32 with a dynamic batch axis
and two outputs: ``logits`` (N, C) and ``features`` (N, F), the pooled backbone features that the
out-of-distribution gate scores (``PlaneClassifier.forward_with_features`` ; ``core.ood``; its fitted statistics travel in the metadata under
``fetalplanes_ood_stats``, the gate's summary in the spec's ``ood`` section). The whole :class:`ModelSpec` (class names, preprocessing,
temperature, abstain threshold, architecture, training record) travels in the ONNX
``metadata_props`` under :data:`SPEC_KEY`, next to a few flat keys (``class_names``,
``image_size``, ``mean``, ``std``, ``task``, ``name``) for other tools. The torch-free
runtime (:mod:`fetalplanes.runtime`) rebuilds the exact training preprocessing from it.

Nothing is written until ONNX Runtime reproduces the PyTorch logits on real, preprocessed
images at batch 1 and at batch > 1 (identical argmax and max |logit diff| under a
tolerance); the file is then written atomically, so a half-written or unverified model is
never left at the target path.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
from PIL import Image

from fetalplanes.core.atomic import atomic_path
from fetalplanes.core.errors import DataError, UsageError, UserError
from fetalplanes.core.io import load_image
from fetalplanes.core.postprocess import top1
from fetalplanes.core.preprocess import preprocess_batch
from fetalplanes.core.spec import ModelSpec
from fetalplanes.data.sources import load_source
from fetalplanes.data.synth import PLANE_CODES, render
from fetalplanes.runtime.artifact import (
    OOD_KEY,
    SPEC_KEY,
    detect_kind,
    onnx_metadata,
    set_onnx_metadata,
    spec_to_metadata,
)
from fetalplanes.runtime.onnx_backend import INPUT_NAME, OUTPUT_NAME
from fetalplanes.runtime.session import load_session

if TYPE_CHECKING:  # torch / onnx are imported lazily: the CLI must start without them
    import onnx
    import onnxruntime
    import torch

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
FEATURES_NAME = "features"
FP32_TOLERANCE = 1e-3
EXPORTERS = ("dynamo", "torchscript")
# Built-in verification set when no data folder is given: rendered phantoms of every plane.
_BUILTIN_PER_CLASS = 2


class ParityError(UserError, ValueError):
    """ONNX Runtime does not reproduce the PyTorch model; the file was not written."""


# ------------------------------------------------------------------ verification inputs


def builtin_images(class_names: Sequence[str] | None = None, per_class: int = _BUILTIN_PER_CLASS) -> list[Image.Image]:
    """Synthetic phantom images of every plane (deterministic), used when no data is given."""
    rng = np.random.default_rng(0)
    planes = [c for c in (class_names or ()) if c in PLANE_CODES] or list(PLANE_CODES)
    images = []
    for plane in planes:
        for _ in range(per_class):
            arr, _mask = render(plane, rng, (160, 128))
            images.append(Image.fromarray(arr, mode="L"))
    return images


def images_from_dir(data: str | Path, task: str = "planes", limit: int = 12) -> list[Image.Image]:
    """Up to ``limit`` images from a dataset folder, spread over its classes (for parity)."""
    # Labels are irrelevant for parity, so no class list is imposed on the source.
    index = load_source(data, task=task)
    if not index.samples:
        raise DataError(f"{data}: no images found to verify the export on")
    by_class: dict[int, list[Path]] = {}
    for s in index.samples:
        by_class.setdefault(s.label, []).append(s.path)
    # Round-robin over classes so every class's typical input is checked.
    picked: list[Path] = []
    queues = [list(v) for _, v in sorted(by_class.items())]
    while len(picked) < limit and any(queues):
        for q in queues:
            if q and len(picked) < limit:
                picked.append(q.pop(0))
    return [load_image(p) for p in picked]


# ------------------------------------------------------------------ export + parity


@contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Silence libraries' INFO chatter (per-pass / per-tensor lines) for the duration of a call
    ('' is the root logger, which onnxruntime.quantization logs to)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _with_features(model: "torch.nn.Module") -> "torch.nn.Module":
    """``model`` answering (logits, penultimate features), for the two-output graph."""
    import torch

    class WithFeatures(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.inner.forward_with_features(x)

    return WithFeatures(model).eval() if hasattr(model, "forward_with_features") else model


def _to_onnx(model: "torch.nn.Module", image_size: int, opset: int, exporter: str) -> "onnx.ModelProto":
    import onnx
    import torch

    example = (torch.zeros(2, 3, image_size, image_size),)
    model = _with_features(model)
    outputs = [OUTPUT_NAME, FEATURES_NAME] if hasattr(model, "inner") else [OUTPUT_NAME]
    common = dict(input_names=[INPUT_NAME], output_names=outputs, opset_version=opset, verbose=False)
    with warnings.catch_warnings(), torch.no_grad(), quiet_loggers("onnx_ir", "onnxscript", "torch.onnx"):
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, tracer notes)
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(
                model, example, dynamo=True, dynamic_shapes=({0: batch},), optimize=True, **common
            )
            return program.model_proto
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            torch.onnx.export(
                model, example, str(path), dynamo=False, do_constant_folding=True,
                dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]}, **common,
            )
            return onnx.load(str(path))


def _torch_outputs(model: "torch.nn.Module", x: np.ndarray) -> list[np.ndarray]:
    import torch

    with torch.inference_mode():
        out = _with_features(model)(torch.from_numpy(x))
    return [t.float().numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _ort_outputs(sess: onnxruntime.InferenceSession, x: np.ndarray) -> list[np.ndarray]:
    names = [o.name for o in sess.get_outputs() if o.name in (OUTPUT_NAME, FEATURES_NAME)]
    return sess.run(names, {INPUT_NAME: x})


def check_parity(
    model: "torch.nn.Module", onnx_bytes: bytes, inputs: np.ndarray, tolerance: float = FP32_TOLERANCE
) -> dict[str, Any]:
    """Compare PyTorch and ONNX Runtime logits (and penultimate features, relative to their
    largest magnitude) at batch 1 (each input) and at full batch."""
    sess = load_session(onnx_bytes)
    refs = _torch_outputs(model, inputs)
    ref = refs[0]
    per_image = [_ort_outputs(sess, inputs[i : i + 1]) for i in range(len(inputs))]
    single = [np.concatenate([o[j] for o in per_image]) for j in range(len(refs))]
    batched = _ort_outputs(sess, inputs)
    diffs = {"batch1": float(np.abs(single[0] - ref).max()), f"batch{len(inputs)}": float(np.abs(batched[0] - ref).max())}
    mismatches = int((top1(single[0]) != top1(ref)).sum() + (top1(batched[0]) != top1(ref)).sum())
    max_diff = max(diffs.values())
    feature_diff = None
    if len(refs) > 1:  # features: the OOD score's input, so the gate answers alike on both paths
        scale = max(1.0, float(np.abs(refs[1]).max()))
        feature_diff = max(float(np.abs(single[1] - refs[1]).max()), float(np.abs(batched[1] - refs[1]).max())) / scale
        max_diff = max(max_diff, feature_diff)
    return {
        "max_rel_feature_diff": feature_diff,
        "n_images": int(len(inputs)),
        "batch_sizes": [1, int(len(inputs))],
        "max_abs_logit_diff": max_diff,
        "max_abs_logit_diff_by_batch": diffs,
        "argmax_mismatches": mismatches,
        "tolerance": tolerance,
        "passed": bool(mismatches == 0 and max_diff < tolerance),
    }


def export_onnx(
    model: "torch.nn.Module",
    spec: ModelSpec,
    out_path: str | Path,
    *,
    verify_images: list[Image.Image] | None = None,
    opset: int | None = None,
    exporter: str = "dynamo",
    tolerance: float = FP32_TOLERANCE,
    ood_blob: str | None = None,
) -> dict[str, Any]:
    """Export ``model`` to ``out_path`` after verifying parity with ONNX Runtime.

    ``ood_blob``: the checkpoint's fitted OOD statistics (``models.checkpoint.ood_blob``), copied
    into the metadata so the exported file carries the same gate as ``spec.ood`` describes.

    The model is put in eval mode on the CPU in float32 (in place) and exported NCHW with a
    dynamic batch axis; ``exporter`` "dynamo" (torch.export, the cleaner graph) falls back
    to "torchscript" when the model cannot be captured.

    ``verify_images`` are real images (preprocessed here with the spec); when None a built-in
    set of rendered phantoms is used. Returns the parity report (a summary of it is also
    stored in the metadata under ``export_parity``);
    raises :class:`ParityError` and writes nothing when parity fails.
    """
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter {exporter!r}; choose one of {list(EXPORTERS)}")
    if spec.has_ood_gate and ood_blob is None:
        # A file whose spec names a gate must carry its statistics: without them, export no gate.
        log.warning("%s: the spec has an OOD gate but no statistics were given; exported without the gate", out_path)
        spec = spec.replace(ood={})
    opset = int(opset or DEFAULT_OPSET)
    model = model.eval().float().cpu()
    images = verify_images if verify_images else builtin_images(spec.class_names)
    if len(images) < 2:
        images = list(images) * 2  # parity must also be checked at a batch > 1
    inputs = preprocess_batch(images, spec.preprocessing)
    t0 = time.perf_counter()
    try:
        proto = _to_onnx(model, spec.preprocessing.image_size, opset, exporter)
    except Exception as err:  # torch.export cannot capture every model; the tracer can
        if exporter != "dynamo":
            raise
        log.warning("dynamo export failed (%s: %s); retrying with the TorchScript exporter", type(err).__name__, err)
        exporter = "torchscript"
        proto = _to_onnx(model, spec.preprocessing.image_size, opset, exporter)
    set_onnx_metadata(proto, spec)
    data = proto.SerializeToString()
    report = check_parity(model, data, inputs, tolerance)
    report.update(exporter=exporter, opset=opset, export_s=round(time.perf_counter() - t0, 2))
    report.update(verify_source="given images" if verify_images else "built-in phantoms")
    if not report["passed"]:
        raise ParityError(
            f"{out_path}: not written: ONNX Runtime disagrees with PyTorch (max |logit diff| "
            f"{report['max_abs_logit_diff']:.3g}, tolerance {tolerance:g}; {report['argmax_mismatches']} argmax "
            f"mismatch(es) on {report['n_images']} images)"
        )
    # Metadata does not touch the graph, so the verified parity still holds for these bytes.
    keep = ("max_abs_logit_diff", "max_rel_feature_diff", "n_images", "tolerance", "exporter", "opset", "verify_source")
    extra = {"export_parity": json.dumps({k: report[k] for k in keep})}
    if ood_blob is not None:
        extra[OOD_KEY] = ood_blob
    set_onnx_metadata(proto, spec, extra)
    data = proto.SerializeToString()
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(data)
    report.update(path=str(out_path), size_bytes=len(data))
    log.info("exported %s (max |logit diff| %.2e over %d images)", out_path, report["max_abs_logit_diff"], len(inputs))
    return report


def export_checkpoint(
    ckpt_path: str | Path,
    out_path: str | Path,
    calibration: str | Path | None = None,
    *,
    opset: int | None = None,
    exporter: str = "dynamo",
    tolerance: float = FP32_TOLERANCE,
    n_verify: int = 12,
) -> dict[str, Any]:
    """Export a training checkpoint; parity is verified on images of ``calibration`` (a
    dataset folder or CSV) when given, else on built-in phantoms."""
    from fetalplanes.models.checkpoint import model_from_checkpoint, ood_blob, read_checkpoint, spec_of

    if detect_kind(ckpt_path) == "onnx":
        raise UsageError(f"{ckpt_path}: is already an ONNX model; export takes the training checkpoint (.ckpt)")
    ckpt = read_checkpoint(ckpt_path)
    spec = spec_of(ckpt, str(ckpt_path))
    model = model_from_checkpoint(ckpt, spec, str(ckpt_path))
    images = images_from_dir(calibration, spec.task, n_verify) if calibration else None
    report = export_onnx(model, spec, out_path, verify_images=images, opset=opset, exporter=exporter,
                         tolerance=tolerance, ood_blob=ood_blob(ckpt))
    report["checkpoint"] = str(ckpt_path)
    return report
