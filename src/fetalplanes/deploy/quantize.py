"""Static int8 (QDQ) quantization of an exported model, behind an accuracy gate.

ONNX Runtime's ``quantize_static`` calibrates activation ranges on preprocessed *training*
images (the official train split of the given dataset). A disjoint part of those training
images is held out: the int8 model is run on it next to the fp32 model, and the result is
refused (nothing written) when the accuracy drop exceeds ``max_drop``, unless forced.
The drop is fp32 accuracy - int8 accuracy against the labels, or 1 - top-1 agreement when
the hold-out has no labels for the model's classes.

Static QDQ rather than dynamic quantization: dynamic int8 re-computes activation scales at
run time and was slower than fp32 on the target CPU; static QDQ uses the int8 kernels
(uint8 activations x int8 per-channel weights, the ONNX Runtime recommendation for x86
CPUs with VNNI).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fetalplanes.core.atomic import atomic_path
from fetalplanes.core.errors import DataError, UserError
from fetalplanes.core.io import load_image
from fetalplanes.core.postprocess import top1
from fetalplanes.core.preprocess import preprocess
from fetalplanes.core.spec import ModelSpec
from fetalplanes.data.sources import load_source
from fetalplanes.deploy.export import quiet_loggers
from fetalplanes.runtime.artifact import OOD_KEY, set_onnx_metadata
from fetalplanes.runtime.onnx_backend import INPUT_NAME, OnnxPredictor

log = logging.getLogger(__name__)

DEFAULT_MAX_DROP = 0.01
DEFAULT_N_CALIB = 200
DEFAULT_N_HOLDOUT = 300
HOLDOUT_FRACTION = 0.3
_BATCH = 16


class QuantizationGateError(UserError, ValueError):
    """The int8 model lost too much accuracy on the calibration hold-out; not written."""


def int8_path(fp32_path: str | Path) -> Path:
    """Default int8 file next to the fp32 one: ``model.onnx`` -> ``model.int8.onnx``."""
    p = Path(fp32_path)
    return p.with_name(f"{p.stem}.int8{p.suffix or '.onnx'}")


# ------------------------------------------------------------------ calibration data


def _stratified_split(labels: Sequence[int], n_holdout: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices (rest, holdout), with the hold-out spread evenly over the classes."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    # Sort by (class, rank within class) so taking every k-th item stratifies.
    rank: dict[int, int] = {}
    keyed = []
    for i in order:
        r = rank.get(labels[i], 0)
        rank[labels[i]] = r + 1
        keyed.append((r, labels[i], int(i)))
    keyed.sort()
    held = [i for _, _, i in keyed[:n_holdout]]
    held_set = set(held)
    return [int(i) for i in order if int(i) not in held_set], held


def calibration_samples(
    data: str | Path,
    spec: ModelSpec,
    n_calib: int = DEFAULT_N_CALIB,
    n_holdout: int = DEFAULT_N_HOLDOUT,
    holdout_fraction: float = HOLDOUT_FRACTION,
    seed: int = 0,
) -> tuple[list[Path], list[Path], np.ndarray]:
    """(calibration paths, hold-out paths, hold-out labels as spec class indices or -1).

    With an official split (FETAL_PLANES_DB) only its training images are used, so test
    images never tune the model; a source without one (class folders, a CSV list) is taken
    to be the training images the user chose.
    """
    index = load_source(data, task=spec.task)
    if any("official_split" in s.meta for s in index.samples):
        train = [s for s in index.samples if s.meta.get("official_split") == "train"]
    else:
        log.info("%s has no official split: calibrating on all of its images", data)
        train = list(index.samples)
    if not train:
        raise DataError(f"{data}: no training images found for calibration")
    to_spec = {i: (spec.class_names.index(c) if c in spec.class_names else -1) for i, c in enumerate(index.class_names)}
    labels = [to_spec.get(s.label, -1) for s in train]
    n_hold = min(n_holdout, max(1, int(round(holdout_fraction * len(train)))))
    if len(train) - n_hold < 1:
        raise DataError(f"{data}: only {len(train)} training image(s); need at least 2 to calibrate and hold out")
    rest, held = _stratified_split(labels, n_hold, seed)
    calib = [train[i].path for i in rest[:n_calib]]
    return calib, [train[i].path for i in held], np.asarray([labels[i] for i in held], dtype=np.int64)


def load_arrays(paths: Sequence[Path], spec: ModelSpec) -> np.ndarray:
    """Preprocessed float32 (N, 3, S, S) for image files (the one training preprocessing)."""
    s = spec.preprocessing.image_size
    out = np.empty((len(paths), 3, s, s), dtype=np.float32)
    for i, p in enumerate(paths):
        out[i] = preprocess(load_image(p), spec.preprocessing)
    return out


def _reader(arrays: np.ndarray, batch: int = _BATCH) -> Any:
    """An ORT CalibrationDataReader over preprocessed batches (rewindable)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _ArrayReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._i >= len(arrays):
                return None
            x = arrays[self._i : self._i + batch]
            self._i += batch
            return {INPUT_NAME: x}

        def rewind(self) -> None:
            self._i = 0

    return _ArrayReader()


# ------------------------------------------------------------------ quantize


def _prepare(fp32_path: Path, work: Path) -> Path:
    """ORT's quant_pre_process (shape inference + optimization); the fp32 model if it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "pre.onnx"
    try:
        # Symbolic shape inference (meant for transformers) cannot follow the conv chain
        # of the dynamo graph; ONNX shape inference and ORT graph optimization still run.
        quant_pre_process(str(fp32_path), str(out), skip_symbolic_shape=True)
        return out
    except Exception as err:  # pre-processing is an optimisation only; quantization still works
        log.warning("quant_pre_process failed (%s: %s); quantizing the exported graph directly", type(err).__name__, err)
        return fp32_path


def _quantize(source: Path, out: Path, calib: np.ndarray, per_channel: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with quiet_loggers(""):  # one INFO line per adjusted weight scale otherwise
        quantize_static(
            str(source), str(out), _reader(calib),
            quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=False,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


def _with_metadata(model_path: Path, spec: ModelSpec, info: dict[str, Any], ood_blob: str | None = None) -> bytes:
    """The quantized graph with the fp32 file's spec, the quantization record and, when the fp32
    file has one, its OOD gate's statistics (fitted on fp32 features: the int8 gate is
    approximate, as the int8 logits are)."""
    import onnx

    proto = onnx.load(str(model_path))
    extra = {"quantization": json.dumps(info, sort_keys=True)}
    if ood_blob is not None:
        extra[OOD_KEY] = ood_blob
    elif spec.has_ood_gate:
        spec = spec.replace(ood={})
    set_onnx_metadata(proto, spec, extra)
    return proto.SerializeToString()


def latency_ms(predictor: OnnxPredictor, x: np.ndarray, runs: int = 20, warmup: int = 3) -> float:
    """Median wall time (ms) of one ``logits(x)`` call."""
    for _ in range(warmup):
        predictor.logits(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        predictor.logits(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _batched(predictor: OnnxPredictor, x: np.ndarray, batch: int = _BATCH) -> np.ndarray:
    return np.concatenate([predictor.logits(x[i : i + batch]) for i in range(0, len(x), batch)])


def gate_metrics(fp32_logits: np.ndarray, int8_logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement, accuracies (when labels are known) and the drop the gate judges."""
    p32, p8 = top1(fp32_logits), top1(int8_logits)
    out: dict[str, Any] = {"n_holdout": int(len(p32)), "agreement": float((p32 == p8).mean())}
    known = labels >= 0
    if known.any():
        out["n_labelled"] = int(known.sum())
        out["acc_fp32"] = float((p32[known] == labels[known]).mean())
        out["acc_int8"] = float((p8[known] == labels[known]).mean())
        out["drop"] = out["acc_fp32"] - out["acc_int8"]
        out["drop_basis"] = "accuracy vs labels"
    else:
        out["drop"] = 1.0 - out["agreement"]
        out["drop_basis"] = "1 - agreement with fp32"
    out["max_abs_logit_diff"] = float(np.abs(fp32_logits - int8_logits).max())
    return out


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path | None,
    calibration: str | Path,
    *,
    max_drop: float = DEFAULT_MAX_DROP,
    force: bool = False,
    n_calib: int = DEFAULT_N_CALIB,
    n_holdout: int = DEFAULT_N_HOLDOUT,
    holdout_fraction: float = HOLDOUT_FRACTION,
    per_channel: bool = True,
    pre_process: bool = True,
    seed: int = 0,
    latency_runs: int = 20,
) -> dict[str, Any]:
    """Quantize a fetalplanes fp32 ONNX model to static int8 QDQ, gated on the hold-out.

    Returns the report (agreement, accuracies, drop, latencies, path). Raises
    :class:`QuantizationGateError` without writing anything when ``drop > max_drop`` and
    not ``force``.
    """
    fp32_path = Path(fp32_path)
    out_path = Path(out_path) if out_path else int8_path(fp32_path)
    fp32 = OnnxPredictor(fp32_path)
    spec = fp32.spec
    calib_paths, hold_paths, labels = calibration_samples(calibration, spec, n_calib, n_holdout, holdout_fraction, seed)
    calib, held = load_arrays(calib_paths, spec), load_arrays(hold_paths, spec)
    log.info("calibrating on %d training images, gating on %d held-out ones", len(calib), len(held))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        _quantize(_prepare(fp32_path, work) if pre_process else fp32_path, work / "int8.onnx", calib, per_channel)
        quant_s = time.perf_counter() - t0
        info = {
            "format": "QDQ", "activations": "uint8", "weights": "int8 per-channel" if per_channel else "int8",
            "calibration": str(calibration), "n_calib": len(calib), "method": "MinMax",
        }
        from fetalplanes.runtime.artifact import OOD_KEY

        data = _with_metadata(work / "int8.onnx", spec, info, fp32.metadata.get(OOD_KEY))
        (work / "final.onnx").write_bytes(data)
        int8 = OnnxPredictor(work / "final.onnx")
        report = gate_metrics(_batched(fp32, held), _batched(int8, held), labels)
        x1 = held[:1]
        report["latency_ms_b1"] = {"fp32": latency_ms(fp32, x1, latency_runs), "int8": latency_ms(int8, x1, latency_runs)}
    report.update(n_calib=len(calib), max_drop=max_drop, forced=bool(force), quantize_s=round(quant_s, 2))
    report["speedup_b1"] = report["latency_ms_b1"]["fp32"] / max(report["latency_ms_b1"]["int8"], 1e-9)
    report["passed"] = bool(report["drop"] <= max_drop)
    if not report["passed"] and not force:
        raise QuantizationGateError(
            f"{out_path}: int8 model refused: accuracy drop {report['drop']:.4f} ({report['drop_basis']}) on "
            f"{report['n_holdout']} held-out calibration images exceeds --max-drop {max_drop:g} "
            f"(top-1 agreement with fp32 {report['agreement']:.4f}); nothing written. "
            "Use more calibration images, raise --max-drop, keep the fp32 model, or pass --force to write it anyway."
        )
    with atomic_path(out_path) as tmp_out:
        tmp_out.write_bytes(data)
    report.update(path=str(out_path), size_bytes=len(data))
    log.info("int8 model %s: agreement %.4f, drop %.4f, b1 latency %.1f -> %.1f ms",
             out_path, report["agreement"], report["drop"], report["latency_ms_b1"]["fp32"], report["latency_ms_b1"]["int8"])
    return report
