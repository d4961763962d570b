"""The one ONNX Runtime session builder (torch-free).

Every ORT session of the package is built here: the Predictor's (``runtime.onnx_backend``), the
spec reader's (``runtime.artifact``), the export parity check (``deploy.export``) and ``bench``'s
knob sweep (``deploy.bench_worker``), so a setting (threads, spinning, optimization level) means
the same thing everywhere. Threads and spinning default to the one thread policy
(``runtime.threads``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from fetalplanes.core.errors import MissingExtraError, ModelFileError, ModelFileNotFound
from fetalplanes.runtime.onnx_bounds import onnx_problem
from fetalplanes.runtime.threads import check_threads, process_policy

__all__ = ["OPT_LEVELS", "check_onnx", "load_session", "session_options"]

OPT_LEVELS = ("disable", "basic", "extended", "all")
"""ORT graph optimization levels, by name (``session_options(opt_level=...)``)."""
SESSION_LOG_SEVERITY = 4
"""ORT's log level for the sessions :func:`load_session` builds: 4 = fatal only. ORT writes its
own warning/error lines straight to stderr (e.g. a failed constant folding of a damaged model)
before raising; every failure reaches the user as our one-line error instead."""


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtraError("onnxruntime is not installed; install the runtime with `pip install fetalplanes[runtime]`") from None
    return onnxruntime


def session_options(threads: int | None = None, *, opt_level: str = "all", spinning: bool | None = None,
                    profile_prefix: str | None = None, log_severity: int | None = None) -> Any:
    """ORT options for small-batch CPU inference: ``opt_level`` graph optimizations (one of
    :data:`OPT_LEVELS`), ``threads`` intra-op threads (default: the thread policy's,
    ``runtime.threads.process_policy``), sequential execution (the graph is a chain: inter-op
    threads idle).

    ``spinning``: whether idle worker threads spin (default: the thread policy's wait, passive
    unless ``FETALPLANES_WAIT=spin``). ``profile_prefix`` turns on op profiling.
    Raises ``ValueError`` naming the valid levels for an unknown ``opt_level``, ``UserError`` for
    ``threads`` outside 1..``runtime.threads.MAX_THREADS``.
    """
    ort = _onnxruntime()
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if opt_level not in levels:
        raise ValueError(f"unknown ORT optimization level {opt_level!r}; choose one of {list(OPT_LEVELS)}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[opt_level]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    policy = process_policy()
    opts.intra_op_num_threads = check_threads(int(threads)) if threads else policy.threads
    opts.inter_op_num_threads = 1
    if log_severity is not None:
        opts.log_severity_level = int(log_severity)
    # Spinning worker threads win a few per cent on an idle, dedicated box but multiply the time
    # when the host is shared (benchmarks/bench_contention.py): passive unless the policy says spin.
    spinning = policy.spinning if spinning is None else spinning
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return opts


def check_onnx(path: str | os.PathLike[str]) -> None:
    """``ModelFileError`` naming the file and the tensor when an ONNX file's declared sizes or
    external data exceed the limits (``runtime.onnx_bounds``); checked before any session is built."""
    problem = onnx_problem(path)
    if problem:
        raise ModelFileError(problem)


def load_session(model: str | os.PathLike[str] | bytes, threads: int | None = None,
                 providers: Sequence[Any] | None = None, options: Any = None) -> Any:
    """An ONNX Runtime session for a model file or serialized model bytes (``options``: an
    ``ort.SessionOptions`` replacing :func:`session_options`); ``ModelFileError`` naming the file
    when it cannot load (``ModelFileNotFound`` when it does not exist)."""
    ort = _onnxruntime()
    name = "<ONNX bytes>" if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise ModelFileNotFound(f"{name}: ONNX model file not found")
    if not isinstance(model, bytes):
        check_onnx(model)  # declared sizes and external data bounded before ORT allocates anything
    # Built before the try: a bad thread count is the caller's setting, not a fault of the file.
    opts = options if options is not None else session_options(threads, log_severity=SESSION_LOG_SEVERITY)
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else name, opts,
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as err:  # ORT raises its own exception types for bad files
        raise ModelFileError(f"{name}: cannot load as an ONNX model ({type(err).__name__}: {err})") from None
