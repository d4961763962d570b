"""Provenance stamp for every results JSON that README.md or docs/ quote.

``stamp(result, script, ...)`` adds a ``provenance`` block: the git commit (and whether the
tree had uncommitted changes), package versions, CPU model and cores, torch intra/inter-op
threads, ONNX Runtime threads where the benchmark used ORT, and ``source_sha256``.

``source_sha256`` is the hash the docs test compares with today's tree, so it names the files a
number depends on. The honest simple choice: every file of the package that can change a
result (``src/fetalplanes/**/*.py`` and the presets ``src/fetalplanes/configs/**/*.yaml``),
plus the scripts that produced the result (the benchmark and anything it runs from
``benchmarks/``). The renderer that writes the doc text is not in the hash: a change to it is
caught by the test that compares each doc region with the renderer's output. Any change to the package therefore makes every quoted number "stale" until
``make docs-numbers`` re-runs it; a finer per-number dependency list would be guesswork.

Kept in ``benchmarks/`` (not in the package): it reads git and hashes the source tree of a
checkout, which an installed wheel does not have; ``fetalplanes demo``'s own
``demo_summary.json`` already records the CPU, cores and torch threads (``demo.machine_fields``),
and ``benchmarks/demo_seeds.py`` stamps the JSON that quotes it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fetalplanes"
PACKAGES = ("fetalplanes", "torch", "onnxruntime", "timm", "numpy", "lightning", "torchvision")


def source_files(scripts: list[str] | tuple[str, ...] = (), root: Path = ROOT) -> list[Path]:
    """The files a result depends on (see the module docstring), sorted, as absolute paths under ``root``."""
    package = root / PACKAGE.relative_to(ROOT)
    files = sorted(p for p in package.rglob("*") if p.is_file() and p.suffix in (".py", ".yaml")
                   and "__pycache__" not in p.parts)
    return files + [root / s for s in sorted(set(scripts))]


def source_sha256(scripts: list[str] | tuple[str, ...] = (), root: Path = ROOT) -> str:
    """SHA-256 over (relative path, content) of ``source_files(scripts)``; independent of the checkout's location."""
    h = hashlib.sha256()
    for path in source_files(scripts, root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
        h.update(b"\0")
    return h.hexdigest()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else "unknown"


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _torch_threads() -> dict[str, int | None]:
    try:
        import torch
    except ImportError:
        return {"intra_op": None, "inter_op": None}
    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}


def provenance(scripts: list[str] | tuple[str, ...], ort_threads: int | None = None) -> dict[str, Any]:
    """The provenance block for a result produced by ``scripts`` (paths relative to the repo root)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "versions": _versions(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": cores,
        "torch_threads": _torch_threads(),
        "ort_threads": ort_threads,
        "env_threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "load_avg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "source_files": "src/fetalplanes/**/*.py, src/fetalplanes/configs/**/*.yaml, " + ", ".join(sorted(set(scripts))),
        "source_scripts": sorted(scripts),
        "source_sha256": source_sha256(scripts),
    }


def stamp(result: dict[str, Any], scripts: list[str] | tuple[str, ...], ort_threads: int | None = None) -> dict[str, Any]:
    """``result`` with its ``provenance`` block added (a new dict; the caller writes it)."""
    return {**result, "provenance": provenance(scripts, ort_threads)}
