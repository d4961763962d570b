"""ONNX Runtime sessions for small-batch CPU inference (torch-free; used by the predictor and the
artifact reader, and by ``bench`` for its knob sweep)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from fetalplanes.core.errors import MissingExtraError
from fetalplanes.runtime.artifact import ModelFileError, ModelFileNotFound, check_onnx


def available_cores() -> int:
    """CPU cores this process may use (respects affinity / container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtraError("onnxruntime is not installed; install the runtime with `pip install fetalplanes[runtime]`") from None
    return onnxruntime


def session_options(threads: int | None = None) -> Any:
    """ORT options for small-batch CPU inference: all graph optimizations, one intra-op
    thread per core, sequential execution (the graph is a chain: inter-op threads idle)."""
    ort = _onnxruntime()

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = int(threads) if threads else available_cores()
    opts.inter_op_num_threads = 1
    # Spinning worker threads win ~7 % on an idle, dedicated box but halve throughput when the
    # host is shared (measured in docs/deploy.md): FETALPLANES_ORT_SPIN=0 turns them off.
    if os.environ.get("FETALPLANES_ORT_SPIN", "1").strip() in ("0", "false", "no"):
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def load_session(path: str | os.PathLike[str], threads: int | None = None, providers: Sequence[Any] | None = None,
                 options: Any = None) -> Any:
    """An ONNX Runtime session for ``path`` (``options``: an ``ort.SessionOptions`` replacing
    :func:`session_options`); ``ModelFileError`` naming the file when it cannot load."""
    ort = _onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise ModelFileNotFound(f"{path}: ONNX model file not found")
    check_onnx(path)  # declared sizes and external data bounded before ORT allocates anything
    try:
        opts = options if options is not None else session_options(threads)
        return ort.InferenceSession(str(path), opts, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as err:  # ORT raises its own exception types for bad files
        raise ModelFileError(f"{path}: cannot load as an ONNX model ({type(err).__name__}: {err})") from None
