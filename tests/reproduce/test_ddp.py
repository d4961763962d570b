"""DDP on CPU: 2 processes (gloo) train through the CLI, then evaluate gives the usual metrics."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BATCH = 8


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_and_evaluate(synth_data: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("fetalplanes")
    if not exe.is_file():
        pytest.skip("the fetalplanes console script is not installed next to this Python")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    train = [str(exe), "train", "--data", str(synth_data), "--config", "demo", "--out", str(run), "--max-epochs", "1",
             "--image-size", "64", "--batch-size", str(BATCH), "--devices", "2", "--accelerator", "cpu",
             "--strategy", "ddp", "--workers", "0", "--no-progress", "--seed", "0"]
    res = subprocess.run(train, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    n_train = len(json.loads((run / "splits.json").read_text())["train"])
    # Each of the 2 ranks sees half the training set: half as many optimizer steps as 1 process.
    assert last["global_step"] == math.ceil(math.ceil(n_train / 2) / BATCH)
    assert (run / "calibration.json").is_file()  # rank 0 calibrated the best checkpoint

    out = tmp_path / "eval"
    evaluate = [str(exe), "evaluate", "--checkpoint", str(run / "checkpoints" / "best.ckpt"), "--data", str(synth_data),
                "--out", str(out), "--n-boot", "50"]
    res = subprocess.run(evaluate, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert {"n", "top1", "top2", "f1_macro", "f1_weighted", "ci95", "per_class", "confusion_matrix"} <= set(m)
    assert 0.0 <= m["top1"] <= m["top2"] <= 1.0
