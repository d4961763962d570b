"""Tests for fetalplanes.demo: the synthetic set's seed and the training seed are separate knobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fetalplanes.demo import run_demo


@pytest.mark.slow  # one real epoch of the demo model plus its evaluation: ~25 s of CPU
def test_train_seed_changes_training_only(tmp_path: Path) -> None:
    s = run_demo(tmp_path / "d", per_class=6, seed=2, max_epochs=1, progress=False, train_seed=5)
    assert (s["data_seed"], s["train_seed"]) == (2, 5)
    # The run itself was seeded with the training seed, the phantoms with the data seed.
    assert json.loads((tmp_path / "d" / "run" / "train_summary.json").read_text())["seed"] == 5
    assert json.loads((tmp_path / "d" / "data" / "synth_manifest.json").read_text())["arguments"]["seed"] == 2
