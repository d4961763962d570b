"""``fetalplanes bench``: the paper model against its peers, side by side, on this machine.

For every model (the paper model, its architecture variants and peers, see
:mod:`fetalplanes.deploy.bench_models`) and every backend (torch eager NCHW and
channels_last, ONNX Runtime fp32 and static int8) the run measures, at each batch size,
images/s (median of repeats after warm-up), latency p50/p95, peak memory (a fresh process
per cell, see :mod:`fetalplanes.deploy.bench_worker`), the model file size, parameters
and FLOPs, and the share of the CPU's estimated peak (``FLOPs x img/s / peak``, see
:func:`fetalplanes.deploy.profile.cpu_peak`). For the paper model it also profiles where
the time goes (ORT and torch op tables) and times ORT session settings. Results go to
``OUT/bench.json`` and ``OUT/bench.md``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy

from fetalplanes.core.atomic import write_json, write_text
from fetalplanes.core.errors import UsageError
from fetalplanes.data.synth import synthesize
from fetalplanes.deploy.bench_models import BenchModel, build, model_facts, select_models
from fetalplanes.deploy.bench_report import to_markdown
from fetalplanes.deploy.bench_worker import BACKEND_LABELS, BACKENDS, OrtOptions, Timing, measure
from fetalplanes.deploy.export import export_onnx
from fetalplanes.deploy.profile import cpu_peak, profile_ort, profile_torch, roofline_share, tune_ort
from fetalplanes.deploy.quantize import quantize_onnx
from fetalplanes.runtime.threads import available_cores

log = logging.getLogger(__name__)

QUICK_TIMING = Timing(warmup=1, min_repeats=3, max_repeats=20, budget_s=0.2, max_s=10.0)
FULL_TIMING = Timing(warmup=3, min_repeats=5, max_repeats=2000, budget_s=2.0, max_s=30.0)
TARGET_ORT_BS1_IMG_S = 120.0
TARGET_ORT_VS_EAGER = 4.0


@dataclass
class BenchConfig:
    """What one ``fetalplanes bench`` run measures (see the CLI for the meaning of each)."""

    out_dir: Path
    checkpoint: str | None = None
    preset: str = "paper_lite0"
    peers: bool = True
    models: list[str] | None = None
    backends: tuple[str, ...] = BACKENDS
    batch_sizes: tuple[int, ...] | None = None  # default (1, 32); quick (1, 8)
    image_size: int | None = None  # default: the spec's (224 for presets)
    threads: int | None = None  # default: the cores this process may use
    quick: bool = False
    profile: bool = True
    tune: bool = True
    extra_size: int | None = None  # an extra, clearly labelled ORT row at another input size
    isolate: bool = True  # one fresh process per (model, backend): honest peak memory
    calib_images: int | None = None  # int8 calibration images (synthetic phantoms)
    cell_timeout_s: float = 900.0
    exporter: str = "dynamo"  # deploy.export's exporter: dynamo (default, cleaner graph) | torchscript
    cpus: tuple[int, ...] | None = None  # pin measurements to these cores (export stays unpinned)
    budget_s: float | None = None  # seconds of timed calls per (backend, batch size)
    timing: Timing | None = None

    def resolved(self) -> "BenchConfig":
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise UsageError(f"unknown backend(s) {unknown}; choose from {list(BACKENDS)}")
        if self.exporter not in ("dynamo", "torchscript"):
            raise UsageError(f"unknown exporter {self.exporter!r}; choose one of ['dynamo', 'torchscript']")
        if self.cpus:
            allowed = os.sched_getaffinity(0)
            if not set(self.cpus) <= allowed:
                raise UsageError(f"--cpus {list(self.cpus)} not all available; this process may use {sorted(allowed)}")
        timing = self.timing or (QUICK_TIMING if self.quick else FULL_TIMING)
        return replace(
            self,
            out_dir=Path(self.out_dir),
            batch_sizes=tuple(sorted(set(self.batch_sizes or ((1, 8) if self.quick else (1, 32))))),
            threads=self.threads or (len(self.cpus) if self.cpus else available_cores()),
            calib_images=self.calib_images or (4 if self.quick else 16),
            timing=replace(timing, budget_s=self.budget_s) if self.budget_s else timing,
        )


def machine_info(threads: int, cpus: tuple[int, ...] | None = None) -> dict[str, Any]:
    info = {"python": platform.python_version(), "platform": platform.platform(), "numpy": numpy.__version__}
    for mod in ("torch", "onnxruntime", "onnx", "timm"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return {**cpu_peak(cores=len(cpus) if cpus else None), "threads": threads, "pinned_cpus": list(cpus) if cpus else None,
            "versions": info}


@contextmanager
def pinned(cpus: tuple[int, ...] | None, threads: int) -> Iterator[None]:
    """Run the in-process profile on the measurement cores with the measurement thread count."""
    import torch

    before, torch_threads = os.sched_getaffinity(0), torch.get_num_threads()
    try:
        if cpus:
            os.sched_setaffinity(0, cpus)
        torch.set_num_threads(threads)
        yield
    finally:
        os.sched_setaffinity(0, before)
        torch.set_num_threads(torch_threads)


# ------------------------------------------------------------------------------ model prep
def export_model(model, spec, path: Path, exporter: str = "dynamo") -> dict[str, Any]:
    """ONNX export through :mod:`fetalplanes.deploy.export` (the project's one exporter)."""
    info = export_onnx(model, spec, path, exporter=exporter)
    return dict(info) if isinstance(info, dict) else {}


def calibration_set(out_dir: Path, per_class: int) -> Path:
    """A tiny synthetic FETAL_PLANES_DB-format set to calibrate int8 on (speed only, not accuracy)."""
    root = out_dir / "calibration_phantoms"
    if not (root / "FETAL_PLANES_DB_data.csv").exists():
        synthesize(root, per_class=per_class, seed=0, image_size=(320, 256))
    return root


def quantize_model(fp32: Path, out: Path, calib_dir: Path, n_calib: int) -> dict[str, Any]:
    """Static int8 (QDQ) through :mod:`fetalplanes.deploy.quantize`, calibrated on phantoms.

    Forced past the accuracy gate: presets have random weights, so only speed is meaningful
    here; the gate's numbers are still recorded.
    """
    return quantize_onnx(fp32, out, calib_dir, force=True, n_calib=n_calib, n_holdout=max(2, n_calib // 2), latency_runs=2)


def _try(what: str, fn, *args) -> tuple[dict[str, Any] | None, str | None]:
    """Run a prep step; an error is recorded in the results instead of ending the run."""
    try:
        return fn(*args), None
    except Exception as err:  # noqa: BLE001 - recorded, shown in the report
        log.warning("%s failed: %s: %s", what, type(err).__name__, err)
        return None, f"{type(err).__name__}: {err}"


def prepare(bm: BenchModel, cfg: BenchConfig, model_dir: Path, calib_dir: Path | None = None) -> dict[str, Any]:
    """Build the model once: static facts, ONNX fp32 export and int8 quantization."""
    model, spec = build(bm, cfg.image_size)
    size = spec.preprocessing.image_size
    entry: dict[str, Any] = {**bm.to_dict(), "image_size": size, **model_facts(model, size), "errors": {}}
    needs_ort = any(b.startswith("ort") for b in cfg.backends)
    if needs_ort:
        fp32 = model_dir / f"{bm.name}.onnx"
        info, err = _try(f"{bm.name}: ONNX export", export_model, model, spec, fp32, cfg.exporter)
        if err:
            entry["errors"]["ort_fp32"] = entry["errors"]["ort_int8"] = f"export: {err}"
        else:
            entry["onnx_fp32"] = {"path": str(fp32), "bytes": fp32.stat().st_size, "export": info}
            if "ort_int8" in cfg.backends and calib_dir is not None:
                int8 = model_dir / f"{bm.name}.int8.onnx"
                qinfo, qerr = _try(f"{bm.name}: int8 quantization", quantize_model, fp32, int8, calib_dir, cfg.calib_images)
                if qerr:
                    entry["errors"]["ort_int8"] = f"quantize: {qerr}"
                else:
                    entry["onnx_int8"] = {"path": str(int8), "bytes": int8.stat().st_size, "quantize": qinfo}
    entry["_model"], entry["_spec"] = model, spec  # kept for the paper model's profile
    return entry


# ------------------------------------------------------------------------------ measuring
def run_cell(job: dict[str, Any], isolate: bool, timeout_s: float) -> dict[str, Any]:
    """Measure one (model, backend): in a fresh process (default) or in this one."""
    if not isolate:
        try:
            return measure(job)
        except Exception as err:  # noqa: BLE001 - recorded per cell
            return {"backend": job["backend"], "error": f"{type(err).__name__}: {err}"}
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]), "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="fp-bench-") as tmp:
        job_path, res_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps(job))
        cmd = [sys.executable, "-m", "fetalplanes.deploy.bench_worker", str(job_path), str(res_path)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"backend": job["backend"], "error": f"timed out after {timeout_s:.0f} s"}
        if not res_path.exists():
            tail = (proc.stderr or "").strip().splitlines()[-3:]
            return {"backend": job["backend"], "error": f"worker exited {proc.returncode}: {' | '.join(tail)}"}
        return json.loads(res_path.read_text())


def _job(entry: dict[str, Any], backend: str, cfg: BenchConfig, batch_sizes: tuple[int, ...]) -> dict[str, Any] | None:
    job = {
        "model": BenchModel(**{k: entry[k] for k in ("name", "role", "preset", "checkpoint", "note")}).to_dict(),
        "backend": backend,
        "batch_sizes": list(batch_sizes),
        "threads": cfg.threads,
        "image_size": entry["image_size"],
        "timing": asdict(cfg.timing),
        "ort": asdict(OrtOptions(threads=cfg.threads)),
        "cpus": list(cfg.cpus) if cfg.cpus else None,
    }
    if backend.startswith("ort"):
        key = "onnx_fp32" if backend == "ort_fp32" else "onnx_int8"
        if key not in entry:
            return None
        job["onnx_path"] = entry[key]["path"]
    return job


def _file_bytes(entry: dict[str, Any], backend: str) -> int | None:
    if backend.startswith("torch"):
        return entry["torch_weights_bytes"]
    key = "onnx_fp32" if backend == "ort_fp32" else "onnx_int8"
    return entry.get(key, {}).get("bytes")


def rows_for(entry: dict[str, Any], backend: str, result: dict[str, Any], machine: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten one cell's result into table rows (one per batch size, or one error row)."""
    base = {
        "model": entry["name"], "role": entry["role"], "backend": backend, "backend_label": BACKEND_LABELS[backend],
        "image_size": entry["image_size"], "params_total": entry["params"]["total"],
        "params_trainable": entry["params"]["trainable"], "gflops_per_image": entry["gflops_per_image"],
        "file_bytes": _file_bytes(entry, backend), "spec_size": not entry.get("extra_size", False),
    }
    if "error" in result:
        return [{**base, "error": result["error"]}]
    peak = machine["peak_gops_int8"] if backend == "ort_int8" else machine["peak_gflops_fp32"]
    out = []
    for cell in result["cells"]:
        share = roofline_share(entry["flops_per_image"], cell["img_per_s"], peak)
        fp32_share = roofline_share(entry["flops_per_image"], cell["img_per_s"], machine["peak_gflops_fp32"])
        out.append({**base, **cell, "rss_before_model_mb": result.get("rss_before_model_mb"),
                    "roofline_share": share, "roofline_share_fp32_peak": fp32_share})
    return out


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Speed-up of each row over torch eager NCHW of the same model, size and batch."""
    eager = {(r["model"], r["image_size"], r["batch_size"]): r["img_per_s"] for r in rows if r["backend"] == "torch" and "img_per_s" in r}
    for r in rows:
        ref = eager.get((r["model"], r["image_size"], r.get("batch_size")))
        r["speedup_vs_eager"] = r["img_per_s"] / ref if ref and "img_per_s" in r else None


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets for the paper model at batch 1 and the spec's input size."""
    paper = [r for r in rows if r["role"] == "paper" and r["spec_size"] and r.get("batch_size") == 1 and "img_per_s" in r]
    ort = [r for r in paper if r["backend"].startswith("ort")]
    eager = next((r for r in paper if r["backend"] == "torch"), None)
    if not ort:
        return {"note": "no ONNX Runtime batch-1 row for the paper model"}
    best = max(ort, key=lambda r: r["img_per_s"])
    fp32 = next((r for r in ort if r["backend"] == "ort_fp32"), None)
    ratio = best["img_per_s"] / eager["img_per_s"] if eager else None
    return {
        "model": best["model"],
        "best_ort_backend": best["backend"],
        "ort_bs1_img_s": best["img_per_s"],
        "ort_fp32_bs1_img_s": fp32["img_per_s"] if fp32 else None,
        "target_ort_bs1_img_s": TARGET_ORT_BS1_IMG_S,
        "met_ort_bs1": best["img_per_s"] >= TARGET_ORT_BS1_IMG_S,
        "ort_vs_eager_bs1": ratio,
        "ort_fp32_vs_eager_bs1": fp32["img_per_s"] / eager["img_per_s"] if fp32 and eager else None,
        "target_ort_vs_eager": TARGET_ORT_VS_EAGER,
        "met_ort_vs_eager": bool(ratio and ratio >= TARGET_ORT_VS_EAGER),
        "roofline_share_fp32": fp32["roofline_share"] if fp32 else None,
    }


# ------------------------------------------------------------------------------ the run
def _analyse(entry: dict[str, Any], cfg: BenchConfig) -> dict[str, Any]:
    """Profile and ORT-knob sweep for the paper model (errors recorded, never fatal)."""
    size, out = entry["image_size"], {}
    fp32 = entry.get("onnx_fp32", {}).get("path")
    ort_runs, torch_runs = (5, 2) if cfg.quick else (50, 10)
    # ORT first: torch's OpenMP threads keep spinning for a while after a torch run.
    if cfg.profile and fp32:
        out["ort_profile_bs1"], err = _try("ORT profile", lambda: profile_ort(fp32, size, runs=ort_runs, threads=cfg.threads))
        if err:
            out["ort_profile_error"] = err
    if cfg.profile and "onnx_int8" in entry:
        int8 = entry["onnx_int8"]["path"]
        out["ort_int8_profile_bs1"], _ = _try("ORT int8 profile", lambda: profile_ort(int8, size, runs=ort_runs, threads=cfg.threads))
    if cfg.tune and fp32:
        out["ort_tuning_bs1"], _ = _try("ORT tuning", lambda: tune_ort(fp32, size, cfg.threads, 0.3 if cfg.quick else 1.5))
    if cfg.profile:
        out["torch_profile_bs1"], _ = _try("torch profile", lambda: profile_torch(entry["_model"], size, runs=torch_runs))
    return out


def _extra_size_rows(head: BenchModel, cfg: BenchConfig, model_dir: Path, machine: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper model at another input size (NOT the spec's): ORT fp32 and eager, batch 1."""
    sub = replace(cfg, image_size=cfg.extra_size, backends=("torch", "ort_fp32"))
    bm = replace(head, name=f"{head.name}@{cfg.extra_size}px")
    entry = prepare(bm, sub, model_dir)
    entry["extra_size"] = True
    rows = []
    for backend in sub.backends:
        job = _job(entry, backend, sub, (1,))
        res = run_cell(job, cfg.isolate, cfg.cell_timeout_s) if job else {"error": entry["errors"].get(backend, "not prepared")}
        rows += rows_for(entry, backend, res, machine)
    return rows


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run the whole benchmark; writes OUT/bench.json and OUT/bench.md and returns the results."""
    cfg = cfg.resolved()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = cfg.out_dir / "models"
    model_dir.mkdir(exist_ok=True)
    models = select_models(cfg.checkpoint, cfg.preset, cfg.peers, cfg.models)
    calib_dir = calibration_set(cfg.out_dir, per_class=8 if cfg.quick else 10) if "ort_int8" in cfg.backends else None
    machine = machine_info(cfg.threads, cfg.cpus)
    started = time.time()
    result: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "machine": machine, "load_avg_before": os.getloadavg(), "models": [], "rows": [], "analysis": {},
    }
    for bm in models:
        log.info("bench: %s (%s)", bm.name, bm.note)
        entry = prepare(bm, cfg, model_dir, calib_dir)
        for backend in cfg.backends:
            job = _job(entry, backend, cfg, cfg.batch_sizes)
            res = run_cell(job, cfg.isolate, cfg.cell_timeout_s) if job else {"error": entry["errors"].get(backend, "not prepared")}
            result["rows"] += rows_for(entry, backend, res, machine)
        if bm.role == "paper":
            with pinned(cfg.cpus, cfg.threads):
                result["analysis"] = _analyse(entry, cfg)
        model, _ = entry.pop("_model"), entry.pop("_spec")
        del model
        result["models"].append(entry)
        write_json(cfg.out_dir / "bench.json", {**result, "complete": False})  # partial results survive a kill
    if cfg.extra_size:
        result["rows"] += _extra_size_rows(models[0], cfg, model_dir, machine)
    add_speedups(result["rows"])
    result["targets"] = targets(result["rows"])
    result["load_avg_after"] = os.getloadavg()
    result["wall_s"] = time.time() - started
    result["complete"] = True
    write_json(cfg.out_dir / "bench.json", result)
    write_text(cfg.out_dir / "bench.md", to_markdown(result))
    return result
