"""Measure one (model, backend) cell of ``fetalplanes bench`` inside a fresh process.

``python -m fetalplanes.deploy.bench_worker JOB.json RESULT.json`` builds or loads one model
for one backend, times it at each batch size (ascending) and reports throughput, latency
percentiles and the process's peak resident memory. A fresh process per cell keeps the peak
memory honest: ONNX Runtime cells never import torch, torch cells never load ONNX Runtime.

Timing protocol (:func:`time_calls`): ``warmup`` untimed calls, then timed calls until both
``min_repeats`` calls and ``budget_s`` seconds are done (or ``max_repeats``); images/s is
batch / median call time, latency p50/p95 are per call (= per batch). The process CPU time
over wall time of the timed loop is reported as ``cpu_cores_used``: on a shared machine it
shows how much of the cores the measurement actually got.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fetalplanes.deploy.bench_models import BenchModel, build
from fetalplanes.runtime.onnx_backend import OnnxPredictor
from fetalplanes.runtime.session import load_session, session_options

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("torch", "torch_cl", "ort_fp32", "ort_int8")
BACKEND_LABELS: dict[str, str] = {
    "torch": "torch eager NCHW",
    "torch_cl": "torch eager channels_last",
    "ort_fp32": "ONNX Runtime fp32",
    "ort_int8": "ONNX Runtime int8 (QDQ)",
}
ORT_OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class Timing:
    """How long each (backend, batch size) is timed."""

    warmup: int = 3
    min_repeats: int = 5
    max_repeats: int = 500
    budget_s: float = 2.0
    max_s: float = 30.0  # hard cap per cell, warm-up included: slow cells get fewer repeats

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Timing":
        return cls(**d)

    def for_batch(self, batch: int) -> "Timing":
        """Large batches take seconds per call (DenseNet-169 eager): fewer warm-ups and minimum repeats."""
        if batch == 1:
            return self
        return replace(self, warmup=min(self.warmup, 2), min_repeats=min(self.min_repeats, 3))


@dataclass(frozen=True)
class OrtOptions:
    """ONNX Runtime session knobs the bench varies (see ``profile.tune_ort``)."""

    threads: int = 2
    opt_level: str = "all"
    spinning: bool = True


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux's VmHWM belongs to the address space, so it starts afresh at ``exec``; getrusage's
    ru_maxrss survives exec and would report the parent's size at fork time instead.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def time_calls(fn: Callable[[], Any], batch: int, timing: Timing) -> dict[str, Any]:
    """Time ``fn`` (one batch per call) with warm-up; throughput from the median call.

    Bounded by time: warm-up stops after a quarter of ``max_s``, timing stops once
    ``min_repeats`` and ``budget_s`` are both reached or ``max_s`` has passed (>= 1 call).
    """
    start = time.perf_counter()
    for _ in range(timing.warmup):
        fn()
        if time.perf_counter() - start >= timing.max_s / 4:
            break
    times: list[float] = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while len(times) < timing.max_repeats:
        t0 = time.perf_counter()
        fn()
        now = time.perf_counter()
        times.append(now - t0)
        if len(times) >= timing.min_repeats and now - wall0 >= timing.budget_s:
            break
        if now - start >= timing.max_s:
            break
    wall = time.perf_counter() - wall0
    arr = np.asarray(times)
    median = float(np.median(arr))
    return {
        "batch_size": batch,
        "repeats": len(times),
        "img_per_s": batch / median,
        "latency_ms_p50": median * 1e3,
        "latency_ms_p95": float(np.percentile(arr, 95)) * 1e3,
        "latency_ms_min": float(arr.min()) * 1e3,
        "cpu_cores_used": (time.process_time() - cpu0) / wall if wall > 0 else None,
    }


def ort_options(opts: OrtOptions, profile_prefix: str | None = None):
    """ONNX Runtime session options with the given knobs (and optional op profiling): the one
    builder, ``runtime.session.session_options``, with the knobs set explicitly."""
    # Spinning threads burn cycles waiting for work: fastest alone, harmful on a shared CPU.
    return session_options(int(opts.threads), opt_level=opts.opt_level, spinning=bool(opts.spinning),
                           profile_prefix=profile_prefix, log_severity=3)


def ort_session(path: str | Path, opts: OrtOptions, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session with the given knobs (and optional op profiling)."""
    return load_session(path, options=ort_options(opts, profile_prefix))


def _input(batch: int, image_size: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((batch, 3, image_size, image_size), dtype=np.float32)


def _torch_cells(job: dict[str, Any], timing: Timing) -> tuple[list[dict[str, Any]], float]:
    import torch

    from fetalplanes.models.torch_backend import TorchPredictor

    torch.set_num_threads(int(job["threads"]))
    base = peak_rss_mb()
    model, spec = build(BenchModel.from_dict(job["model"]), job.get("image_size"))
    size = spec.preprocessing.image_size
    # Timed through the Predictor that every command uses (its one backend call per batch).
    predictor = TorchPredictor.from_model(model, spec, channels_last=job["backend"] == "torch_cl")
    cells = []
    for bs in sorted(job["batch_sizes"]):
        x = _input(bs, size)
        cell = time_calls(lambda: predictor.logits(x), bs, timing.for_batch(bs))
        cells.append({**cell, "peak_rss_mb": peak_rss_mb(), "image_size": size})
    return cells, base


def _ort_cells(job: dict[str, Any], timing: Timing) -> tuple[list[dict[str, Any]], float]:
    base = peak_rss_mb()
    predictor = OnnxPredictor(job["onnx_path"], options=ort_options(OrtOptions(**job.get("ort", {}))))
    size = int(job["image_size"])
    cells = []
    for bs in sorted(job["batch_sizes"]):
        x = _input(bs, size)
        cell = time_calls(lambda: predictor.logits(x), bs, timing.for_batch(bs))
        cells.append({**cell, "peak_rss_mb": peak_rss_mb(), "image_size": size})
    return cells, base


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Run one cell: ``job`` has model, backend, batch_sizes, threads, timing (+ onnx_path, ort)."""
    backend = job["backend"]
    if job.get("cpus"):
        os.sched_setaffinity(0, job["cpus"])  # before torch / ORT size their thread pools
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    timing = Timing.from_dict(job.get("timing", {}))
    runner = _torch_cells if backend.startswith("torch") else _ort_cells
    cells, base = runner(job, timing)
    return {"backend": backend, "rss_before_model_mb": base, "cells": cells, "timing": asdict(timing)}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m fetalplanes.deploy.bench_worker JOB.json RESULT.json", file=sys.stderr)
        return 2
    job = json.loads(Path(args[0]).read_text())
    try:
        result = measure(job)
    except Exception as err:  # reported to the parent, which records it in bench.json
        result = {"backend": job.get("backend"), "error": f"{type(err).__name__}: {err}"}
    Path(args[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
