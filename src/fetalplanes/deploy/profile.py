"""Where inference time goes: CPU peak estimate, ONNX Runtime / torch op profiles, ORT knobs.

* :func:`cpu_peak` estimates the machine's peak arithmetic rate from ``/proc/cpuinfo`` and
  the CPU affinity: ``cores x GHz x FLOPs/cycle/core``. FLOPs/cycle/core assumes two FMA
  units per core (2 x 2 x vector lanes): AVX-512 fp32 = 64, AVX2+FMA = 32, AVX = 16, SSE = 8.
  It is an ESTIMATE: the listed clock may be the base clock (turbo is higher, AVX-512
  licences lower), and some parts have one AVX-512 FMA unit only. An int8 peak (VNNI: 4x the
  fp32 rate) is given for the int8 rows.
* :func:`profile_ort` runs a session with ``enable_profiling`` and sums kernel time per op
  type; :func:`profile_torch` uses ``torch.profiler``'s op table (self CPU time).
* :func:`tune_ort` times the paper model at batch 1 under a few session settings (graph
  optimization level, intra-op threads, thread spinning) so the report shows what each knob
  is worth on this machine.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from fetalplanes.deploy.bench_worker import OrtOptions, Timing, _input, ort_session, time_calls
from fetalplanes.runtime.threads import available_cores

log = logging.getLogger(__name__)

FLOPS_PER_CYCLE_FP32 = (("avx512f", 64), ("avx2", 32), ("avx", 16), ("sse2", 8))


def _cpuinfo(text: str | None = None) -> tuple[str, set[str], float | None]:
    """(model name, flags, MHz) from /proc/cpuinfo text (first processor block)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)$", text, re.M)
    return (
        model.group(1).strip() if model else "unknown",
        set(flags.group(1).split()) if flags else set(),
        float(mhz.group(1)) if mhz else None,
    )


def cpu_peak(cpuinfo_text: str | None = None, cores: int | None = None, ghz: float | None = None) -> dict[str, Any]:
    """Estimated peak fp32 GFLOP/s and int8 GOP/s of the cores available to this process."""
    model, flags, mhz = _cpuinfo(cpuinfo_text)
    cores = cores or available_cores()
    ghz = ghz or (mhz / 1000.0 if mhz else 2.0)
    isa, per_cycle = next(((name, n) for name, n in FLOPS_PER_CYCLE_FP32 if name in flags), ("scalar", 4))
    if isa == "avx2" and "fma" not in flags:
        per_cycle //= 2
    vnni = bool(flags & {"avx512_vnni", "avx_vnni"})
    peak = cores * ghz * per_cycle
    return {
        "cpu": model,
        "cores": cores,
        "ghz": round(ghz, 3),
        "isa": isa,
        "fp32_flops_per_cycle_per_core": per_cycle,
        "peak_gflops_fp32": round(peak, 1),
        "int8_vnni": vnni,
        "peak_gops_int8": round(peak * (4 if vnni else 1), 1),
        "amx": "amx_int8" in flags,
        "formula": f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOPs/cycle/core ({isa}, 2 FMA units assumed)",
        "note": "estimate: listed clock (may be base, not turbo); FLOPs count conv+matmul only",
    }


def roofline_share(flops_per_image: float, img_per_s: float, peak_gflops: float) -> float:
    """Fraction of the estimated peak that the measured throughput uses."""
    return flops_per_image * img_per_s / (peak_gflops * 1e9) if peak_gflops > 0 else 0.0


def ort_op_totals(profile_json: str | Path) -> dict[str, dict[str, float]]:
    """Sum kernel time (µs) and call count per op type from an ORT profile file."""
    events = json.loads(Path(profile_json).read_text())
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"us": 0.0, "calls": 0})
    for ev in events:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        op = ev.get("args", {}).get("op_name", "?")
        totals[op]["us"] += float(ev.get("dur", 0))
        totals[op]["calls"] += 1
    return dict(totals)


def _top(totals: dict[str, dict[str, float]], runs: int, k: int) -> list[dict[str, Any]]:
    grand = sum(v["us"] for v in totals.values()) or 1.0
    rows = sorted(totals.items(), key=lambda kv: -kv[1]["us"])[:k]
    return [
        {"op": op, "ms_per_run": v["us"] / runs / 1e3, "share": v["us"] / grand, "calls_per_run": v["calls"] / runs}
        for op, v in rows
    ]


def profile_ort(onnx_path: str | Path, image_size: int, batch: int = 1, runs: int = 30, top: int = 10, **ort_kwargs: Any) -> dict[str, Any]:
    """Top op types by kernel time for ``runs`` calls of an ORT session (after warm-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = ort_session(onnx_path, OrtOptions(**ort_kwargs), profile_prefix=str(Path(tmp) / "ort"))
        name, x = sess.get_inputs()[0].name, _input(batch, image_size)
        for _ in range(3):
            sess.run(None, {name: x})
        # Warm-up calls are in the file too: count them so per-run numbers stay right.
        for _ in range(runs):
            sess.run(None, {name: x})
        totals = ort_op_totals(sess.end_profiling())
    n = runs + 3
    total_ms = sum(v["us"] for v in totals.values()) / n / 1e3
    return {"engine": "onnxruntime", "batch": batch, "runs": n, "kernel_ms_per_run": total_ms, "top_ops": _top(totals, n, top)}


def profile_torch(model, image_size: int, batch: int = 1, runs: int = 10, top: int = 10, channels_last: bool = False) -> dict[str, Any]:
    """Top aten ops by self CPU time for ``runs`` eager forward passes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.eval().to(memory_format=fmt)
    x = torch.randn(batch, 3, image_size, image_size).contiguous(memory_format=fmt)
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model(x)
    totals = {
        e.key: {"us": float(e.self_cpu_time_total), "calls": float(e.count)}
        for e in prof.key_averages()
        if e.self_cpu_time_total > 0
    }
    total_ms = sum(v["us"] for v in totals.values()) / runs / 1e3
    model.to(memory_format=torch.contiguous_format)
    return {"engine": "torch", "batch": batch, "runs": runs, "self_cpu_ms_per_run": total_ms, "top_ops": _top(totals, runs, top)}


def tune_ort(onnx_path: str | Path, image_size: int, threads: int, budget_s: float = 1.0) -> list[dict[str, Any]]:
    """Batch-1 images/s of the ONNX model under a few session settings."""
    grid = [OrtOptions(threads, level, True) for level in ("basic", "extended", "all")]
    grid += [OrtOptions(threads, "all", False)]
    if threads > 1:
        grid += [OrtOptions(1, "all", True), OrtOptions(1, "all", False)]
    x = _input(1, image_size)
    rows = []
    for opts in grid:
        sess = ort_session(onnx_path, opts)
        name = sess.get_inputs()[0].name
        cell = time_calls(lambda: sess.run(None, {name: x}), 1, Timing(warmup=5, min_repeats=10, budget_s=budget_s))
        rows.append({"threads": opts.threads, "opt_level": opts.opt_level, "spinning": opts.spinning, **cell})
    return rows
