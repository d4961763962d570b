"""Shared fixtures: tiny synthetic FETAL_PLANES_DB-format data, tiny trained checkpoints,
and the path to the real sample images in ../shared/data (tests skip when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never reach for a model hub from tests: offline failures would otherwise hang ~1 minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_CASES = REPO.parent / "shared" / "cases"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real FETAL_PLANES_DB and HC18 samples); skips when absent."""
    if not (SHARED_DATA / "fetal_planes_db").is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic FETAL_PLANES_DB-format set (8 images per class)."""
    from fetalplanes.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("synth") / "db", per_class=8, seed=1, image_size=(160, 128))


def train_tiny(data: Path, out: Path, **overrides) -> Path:
    """Train and calibrate a small model quickly (64 px, 1 epoch by default), as ``fetalplanes
    train`` does; returns best.ckpt."""
    from fetalplanes.training.config import load_config
    from fetalplanes.workflow import train_and_calibrate

    base = {
        "data.image_size": 64,
        "data.num_workers": 0,
        "optim.max_epochs": 1,
        "optim.batch_size": 16,
        "trainer.progress": False,
        "trainer.seed": 0,
        "data.augment": 0.0,
    }
    base.update(overrides)
    return train_and_calibrate(data, load_config("demo", base), out).best_checkpoint


@pytest.fixture(scope="session")
def trainer():
    """``train_tiny`` as a fixture: ``from conftest import ...`` would resolve to whichever
    conftest module was imported first (tests/serve has its own)."""
    return train_tiny


@pytest.fixture(scope="session")
def tiny_checkpoint(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Lite0 + CBAM + MLP checkpoint trained for one epoch at 64 px (seconds)."""
    return train_tiny(synth_data, tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def shared_data_optional() -> Path | None:
    """../shared/data when present, else None (for tests that add real-image checks)."""
    return SHARED_DATA if (SHARED_DATA / "fetal_planes_db").is_dir() else None


@pytest.fixture(scope="session")
def onnx_model(tiny_checkpoint: Path, synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_checkpoint exported to ONNX (skips when the export module is not installed)."""
    export = pytest.importorskip("fetalplanes.deploy.export")
    pytest.importorskip("fetalplanes.runtime")
    from fetalplanes.core.io import load_image
    from fetalplanes.models.checkpoint import load_model, ood_blob, read_checkpoint

    model, spec = load_model(tiny_checkpoint)
    # Two phantoms are enough for the parity check here; the export tests cover it in depth.
    images = [load_image(p) for p in sorted((synth_data / "Images").glob("*.png"))[:2]]
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    # With the checkpoint's OOD statistics, as `fetalplanes export` writes it.
    export.export_onnx(model, spec, out, verify_images=images, ood_blob=ood_blob(read_checkpoint(tiny_checkpoint)))
    return out


@pytest.fixture(scope="session")
def shared_cases() -> Path:
    """../shared/cases (small files, one folder per kind of input fault); skips when absent."""
    if not (SHARED_CASES / "README.md").is_file():
        pytest.skip("../shared/cases is not present")
    return SHARED_CASES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line when the browser tests were skipped (no Debian chromium): say how to run them."""
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if "browser" in getattr(r, "keywords", {}) or "test_browser" in r.nodeid]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} browser tests skipped: Debian chromium is not installed; to run them: "
            "apt-get install -y chromium (as root), then make test (.ci/run does this)", yellow=True)


def _run_cli(*args: str):  # -> subprocess.CompletedProcess[str]
    """``python -m fetalplanes ARGS`` as a user runs it; a traceback on stderr fails the test."""
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "fetalplanes", *args], capture_output=True, text=True, env=env,
                          timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="session")
def cli_run():
    """The CLI in a subprocess (see ``_run_cli``), as a fixture so test modules need no import."""
    return _run_cli
