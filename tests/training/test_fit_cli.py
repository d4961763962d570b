"""End to end from the CLI: train -> evaluate -> predict on a synthetic FETAL_PLANES_DB-format
folder; self-describing checkpoints; SIGKILL + --resume reproduces an unbroken run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fetalplanes.core.classes import PLANES
from fetalplanes.models.checkpoint import CheckpointError, load_model, read_checkpoint, update_spec

CLI = [sys.executable, "-m", "fetalplanes.cli"]
FAST = ["--config", "demo", "--image-size", "64", "--batch-size", "16", "--workers", "0", "--no-progress"]


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"fetalplanes {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_checkpoint_is_self_describing(tiny_checkpoint: Path):
    ckpt = read_checkpoint(tiny_checkpoint)
    record = ckpt["fetalplanes"]
    assert record["spec"]["class_names"] == list(PLANES)
    assert record["spec"]["preprocessing"]["image_size"] == 64
    assert record["config"]["model"]["backbone"] == "tf_efficientnet_lite0"
    assert {"torch", "timm", "lightning", "fetalplanes"} <= set(record["versions"])
    model, spec = load_model(tiny_checkpoint)
    assert spec.training["splits"]["scheme"] == "official"
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 6)


def test_update_spec_rewrites_atomically(tiny_checkpoint: Path, tmp_path: Path):
    copy = tmp_path / "c.ckpt"
    copy.write_bytes(tiny_checkpoint.read_bytes())
    spec = update_spec(copy, temperature=1.5, abstain_threshold=0.4)
    assert load_model(copy)[1].temperature == 1.5 == spec.temperature
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_checkpoint_errors_name_the_file(tmp_path: Path):
    bad = tmp_path / "junk.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        load_model(bad)
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a fetalplanes checkpoint"):
        load_model(tmp_path / "other.ckpt")


@pytest.mark.slow
def test_train_evaluate_predict_from_the_cli(synth_data: Path, tmp_path: Path, shared_data_optional):
    run = tmp_path / "run"
    run_cli("train", "--data", str(synth_data), "--out", str(run), "--max-epochs", "2", *FAST)
    best = run / "checkpoints" / "best.ckpt"
    assert best.is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file() and (run / "logs" / "metrics.csv").is_file()
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["train_img_per_s"] > 0 and summary["params"]["total"] > 1e6
    splits = json.loads((run / "splits.json").read_text())
    assert not set(splits["train"]) & set(splits["test"])

    ev = tmp_path / "eval"
    run_cli("evaluate", "--checkpoint", str(best), "--data", str(synth_data), "--out", str(ev), "--n-boot", "100")
    m = json.loads((ev / "metrics.json").read_text())
    for key in ("top1", "top2", "f1_macro", "f1_weighted", "per_class", "confusion_matrix", "n", "split", "ci95"):
        assert key in m
    ci = m["ci95"]  # the tiny set's test split may have < 10 patients: then the guard gives no interval
    assert ci["unit"] == "patient"
    if ci["top1"] is None:
        assert ci["status"] != "ok"
    else:
        assert ci["top1"]["low"] <= m["top1"] <= ci["top1"]["high"]
    assert set(m["breakdown"]) == {"US_Machine", "Operator"}
    assert m["n"] == sum(m["per_class"][c]["support"] for c in PLANES)
    assert (ev / "confusion_matrix.png").stat().st_size > 1000 and "macro-F1" in (ev / "report.md").read_text()

    out = run_cli("predict", "--checkpoint", str(best), "--format", "json", str(synth_data / "Images")).stdout
    rows = json.loads(out)
    assert len(rows) == 48 and all((r["label"] or r["nearest_plane"]) in PLANES and len(r["topk"]) == 2 for r in rows)
    csv_out = run_cli("predict", "--checkpoint", str(best), "--format", "csv", str(next((synth_data / "Images").iterdir()))).stdout
    assert csv_out.splitlines()[0].startswith("image,label,confidence")

    if shared_data_optional is not None:  # the real images: all load and get a prediction
        real = shared_data_optional / "fetal_planes_db"
        rows = json.loads(run_cli("predict", "--checkpoint", str(best), "--format", "json", str(real / "images")).stdout)
        assert len(rows) == len(list((real / "images").glob("*.png")))  # every image, test split or not
        run_cli("evaluate", "--checkpoint", str(best), "--data", str(real), "--out", str(tmp_path / "real"), "--n-boot", "50")
        assert json.loads((tmp_path / "real" / "metrics.json").read_text())["n"] == 18  # the official test images


def test_cli_errors_are_one_clear_line(tmp_path: Path):
    proc = run_cli("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "nope: no such file or folder" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("train", "--data", str(tmp_path), "--config", "nosuch", "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "presets" in proc.stderr
    proc = run_cli("predict", "--checkpoint", str(tmp_path / "x.ckpt"), str(tmp_path), check=False)
    assert proc.returncode == 2 and "x.ckpt" in proc.stderr


def _last_epoch(ckpt: Path) -> int:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"])
    except Exception:
        return -1


@pytest.mark.slow
def test_sigkill_then_resume_matches_unbroken_run(synth_data: Path, tmp_path: Path, monkeypatch):
    # One thread for all three runs: the default count follows the cores free at start-up, and two
    # runs with different counts round their reductions differently (a parallel suite's other
    # worker decides it), which is not what resuming is about.
    monkeypatch.setenv("FETALPLANES_THREADS", "1")
    args = ["--data", str(synth_data), "--max-epochs", "4", "--seed", "3", *FAST]
    unbroken, broken = tmp_path / "a", tmp_path / "b"
    run_cli("train", "--out", str(unbroken), *args)

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([*CLI, "train", "--out", str(broken), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = broken / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if last.is_file() and _last_epoch(last) >= 0:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = _last_epoch(last)
    assert 0 <= killed_at < 3

    run_cli("train", "--out", str(broken), "--resume", *args)
    a = torch.load(unbroken / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(last, map_location="cpu", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-5), key
    sa = json.loads((unbroken / "train_summary.json").read_text())
    sb = json.loads((broken / "train_summary.json").read_text())
    assert sa["best_val_f1_macro"] == pytest.approx(sb["best_val_f1_macro"], abs=1e-6)
