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


@pytest.mark.slow  # the whole default demo (`make demo`): ~1.5 min on 2 idle cores, several under load
def test_default_demo_heat_maps_beat_a_map_that_looks_at_nothing(tmp_path: Path) -> None:
    """Issue 13's bar, on the demo's own synthetic test split (phantoms, not clinical evidence):
    the default heat map beats the centre prior on pointing game AND energy share with
    non-overlapping 95 % intervals, the centre prior points at the anatomy less than half the
    time, and the maps change when the model is randomized (Adebayo et al. 2018)."""
    s = run_demo(tmp_path / "d", progress=False)
    pg, energy = s["test_pointing_game"], s["test_energy_share"]
    assert s["test_localization_beats_priors"], s["test_localization_verdict"]
    for score in (pg, energy):
        assert score["model"]["ci95"][0] > score["centre"]["ci95"][1]
        assert score["model"]["ci95"][0] > score["uniform"]["ci95"][1]
    assert pg["centre"]["mean"] < 0.5
    assert s["sanity_flagged"] is False
    assert max(s["sanity_median_spearman"].values()) < 0.5
    # The explanation was computed on the held-out test split only, with the config's setting.
    summary = json.loads((tmp_path / "d" / "explain" / "localization.json").read_text())
    assert summary["layer"] == "stage:-3" and summary["method"] == "layercam"
    assert summary["selection"]["split"] == "test" and summary["selection"]["seen_in_training_or_validation"] == 0
