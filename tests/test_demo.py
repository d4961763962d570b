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
def test_default_demo_reports_verdicts_that_agree_with_its_numbers(tmp_path: Path) -> None:
    """The whole default demo on its synthetic test split (phantoms, not clinical evidence).

    Which verdicts one training draw earns depends on the CPU's rounding (issue 22: the sanity
    median moved from 0.418 to 0.506 on another CPU), so this asserts the mechanism: each verdict
    the demo prints agrees with the numbers it prints, the explanation used the held-out test
    split and the config's setting, and the machine is recorded. That a map of the structure
    passes and model-free maps fail is pinned deterministically in tests/explain
    (test_explain_priors, test_explain_sanity)."""
    from fetalplanes.explain.sanity import SURVIVAL_RHO
    from fetalplanes.training.config import load_config

    s = run_demo(tmp_path / "d", progress=False)
    pg, energy = s["test_pointing_game"], s["test_energy_share"]
    clears = all(score["model"]["ci95"][0] > max(score["centre"]["ci95"][1], score["uniform"]["ci95"][1])
                 for score in (pg, energy))
    assert s["test_localization_beats_priors"] is clears, s["test_localization_verdict"]
    assert ("does NOT beat" in s["test_localization_verdict"]) is not clears
    survivors = [name for name, rho in s["sanity_median_spearman"].items() if rho >= SURVIVAL_RHO]
    assert s["sanity_flagged"] is bool(survivors), s["sanity_median_spearman"]
    # The shipped default's own check is said plainly, and agrees with the numbers.
    check = s["explain_default_check"]
    assert (check["status"] == "FLAGGED") is s["sanity_flagged"], check
    assert (check["status"] == "passes") is (max(s["sanity_median_spearman"].values()) <= SURVIVAL_RHO - 0.1), check
    # The phantom set is drawn by numpy from the data seed: the centre prior is not a good map of it.
    assert pg["centre"]["mean"] < 0.5
    # The held-out test scores and the machine that produced them are recorded together.
    ci = s["test_top1_ci95"]
    assert 0.0 <= ci["low"] <= s["test_top1"] <= ci["high"] <= 1.0
    assert s["machine"]["cpu"] and s["machine"]["torch_threads"] >= 1 and s["machine"]["cores"] >= 1
    saved = json.loads((tmp_path / "d" / "demo_summary.json").read_text())
    assert saved["machine"] == s["machine"] and saved["sanity_flagged"] == s["sanity_flagged"]
    # The explanation was computed on the held-out test split only, with the config's setting.
    summary = json.loads((tmp_path / "d" / "explain" / "localization.json").read_text())
    shipped = load_config("demo").explain  # the config's setting, whatever the selection chose
    assert (summary["method"], summary["layer"]) == (shipped.method, shipped.layer)
    assert summary["selection"]["split"] == "test" and summary["selection"]["seen_in_training_or_validation"] == 0


@pytest.mark.slow  # the explain run with sanity checks on the tiny model: ~50 s under load
def test_demo_explanation_fields_state_the_default_check(tiny_checkpoint: Path, synth_data: Path, tmp_path: Path) -> None:
    """The demo's explanation summary says whether its shipped heat map passes its own sanity check."""
    from fetalplanes.demo import explanation_fields
    from fetalplanes.explain.sanity import SURVIVAL_RHO

    fields = explanation_fields(tiny_checkpoint, synth_data, tmp_path / "explain")
    check, medians = fields["explain_default_check"], fields["sanity_median_spearman"]
    worst = max(medians.values())
    expected = "FLAGGED" if worst >= SURVIVAL_RHO else "passes without margin" if worst > SURVIVAL_RHO - 0.1 else "passes"
    assert check["status"] == expected, (check, medians)
    assert fields["explain_method"] in check["statement"] and f"{worst:.3f}" in check["statement"]
