"""Verified ONNX export: PyTorch model -> self-describing ``.onnx`` file.

The exported graph has one input ``image`` (N, 3, S, S) float32 with a dynamic batch axis
and one output ``logits`` (N, C). The whole :class:`ModelSpec` (class names, preprocessing,
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
from fetalplanes.core.preprocess import preprocess_batch
from fetalplanes.core.spec import ModelSpec
from fetalplanes.runtime.artifact import SPEC_KEY, onnx_metadata, set_onnx_metadata, spec_to_metadata
from fetalplanes.runtime.onnx_backend import INPUT_NAME, OUTPUT_NAME
from fetalplanes.runtime.session import load_session

if TYPE_CHECKING:  # torch / onnx are imported lazily: the CLI must start without them
    import onnx
    import torch

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
FP32_TOLERANCE = 1e-3
EXPORTERS = ("dynamo", "torchscript")
# Built-in verification set when no data folder is given: rendered phantoms of every plane.
_BUILTIN_PER_CLASS = 2


class ParityError(UserError, ValueError):
    """ONNX Runtime does not reproduce the PyTorch model; the file was not written."""


# ------------------------------------------------------------------ verification inputs


def builtin_images(class_names: Sequence[str] | None = None, per_class: int = _BUILTIN_PER_CLASS) -> list[Image.Image]:
    """Synthetic phantom images of every plane (deterministic), used when no data is given."""
    from fetalplanes.data.synth import PLANE_CODES, render

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
    from fetalplanes.core.io import load_image
    from fetalplanes.data.sources import load_source

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


def _to_onnx(model: "torch.nn.Module", image_size: int, opset: int, exporter: str) -> "onnx.ModelProto":
    import onnx
    import torch

    example = (torch.zeros(2, 3, image_size, image_size),)
    common = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset, verbose=False)
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
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **common,
            )
            return onnx.load(str(path))


def ort_session(model: bytes | str | Path, threads: int | None = None) -> Any:
    """A CPU InferenceSession with full graph optimizations (``runtime.session``)."""
    return load_session(model, threads)


def _torch_logits(model: "torch.nn.Module", x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(x)).float().numpy()


def _ort_logits(sess: Any, x: np.ndarray) -> np.ndarray:
    return sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def check_parity(
    model: "torch.nn.Module", onnx_bytes: bytes, inputs: np.ndarray, tolerance: float = FP32_TOLERANCE
) -> dict[str, Any]:
    """Compare PyTorch and ONNX Runtime logits at batch 1 (each input) and at full batch."""
    sess = ort_session(onnx_bytes)
    ref = _torch_logits(model, inputs)
    single = np.concatenate([_ort_logits(sess, inputs[i : i + 1]) for i in range(len(inputs))])
    batched = _ort_logits(sess, inputs)
    diffs = {"batch1": float(np.abs(single - ref).max()), f"batch{len(inputs)}": float(np.abs(batched - ref).max())}
    mismatches = int((single.argmax(1) != ref.argmax(1)).sum() + (batched.argmax(1) != ref.argmax(1)).sum())
    max_diff = max(diffs.values())
    return {
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
) -> dict[str, Any]:
    """Export ``model`` to ``out_path`` after verifying parity with ONNX Runtime.

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
    keep = ("max_abs_logit_diff", "n_images", "tolerance", "exporter", "opset", "verify_source")
    set_onnx_metadata(proto, spec, {"export_parity": json.dumps({k: report[k] for k in keep})})
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
    from fetalplanes.models.checkpoint import load_model
    from fetalplanes.runtime.artifact import detect_kind

    if detect_kind(ckpt_path) == "onnx":
        raise UsageError(f"{ckpt_path}: is already an ONNX model; export takes the training checkpoint (.ckpt)")
    model, spec = load_model(ckpt_path)
    images = images_from_dir(calibration, spec.task, n_verify) if calibration else None
    report = export_onnx(model, spec, out_path, verify_images=images, opset=opset, exporter=exporter, tolerance=tolerance)
    report["checkpoint"] = str(ckpt_path)
    return report
