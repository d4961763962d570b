"""Seeded fuzzing of the input layer: a few hundred mutations (truncation, bit flips, header bytes,
header fields) of valid PNG, JPEG, DICOM (also deflated), H.264 video and zip bytes. Each must give
pixels (or a dataset) or one line naming the input; never another exception, never a half-unpacked
folder. Runs in a fresh process to bound time per input and memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


def test_mutated_inputs_fail_cleanly_fast_and_in_bounded_memory() -> None:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{HERE}"}
    done = subprocess.run([sys.executable, str(HERE / "fuzz_inputs.py"), "400", "11"], capture_output=True,
                          text=True, timeout=120, env=env, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["inputs"] == 400
    assert result["failures"] == [], json.dumps(result["failures"][:3], indent=1)
    assert result["slowest_s"] < 2.0, result  # time limit per input
    assert result["rss_growth_mb"] < 100, result  # no mutated size field gets a large allocation
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr[-2000:]
