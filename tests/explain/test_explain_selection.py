"""The rule that chooses a default heat map from compare tables of >= 3 seeds on validation."""

from __future__ import annotations

import pytest

from fetalplanes.explain import selection
from fetalplanes.explain.selection import MARGIN, SURVIVAL_RHO, check_shipped, select_default


def row(label: str, energy: float, worst: float, pg: float = 0.3, method: str | None = None) -> dict:
    method = method or label.split(" @ ")[0]
    return {
        "label": label, "method": method, "layer": label.split(" @ ")[1] if " @ " in label else "input",
        "pointing_game": {"model": {"mean": pg, "ci95": [pg - 0.1, pg + 0.1]}},
        "energy_share": {"model": {"mean": energy, "ci95": [energy - 0.05, energy + 0.05]}},
        "sanity": {"medians": {"cascade: head randomized": worst, "cascade: whole model randomized": 0.01},
                   "max_median": worst, "margin": SURVIVAL_RHO - worst, "flagged": worst >= SURVIVAL_RHO},
    }


def table(seed: int, rows: list[dict], split: str = "val") -> dict:
    return {"train_seed": seed, "split": split, "rows": rows}


def test_best_localization_among_those_that_pass_with_margin() -> None:
    tables = [table(s, [row("layercam @ stage:-3", 0.17, 0.42 + 0.04 * s),  # sits on the threshold: out
                        row("gradientshap", 0.12, 0.20),
                        row("integratedgradients", 0.14, 0.25),
                        row("random @ cam_layer", 0.30, 0.0)])  # a control: never chosen, however it scores
              for s in range(3)]
    out = select_default(tables)
    assert out["chosen"]["label"] == "integratedgradients"
    assert out["chosen"]["energy_share"] == pytest.approx(0.14)
    by = {c["label"]: c for c in out["candidates"]}
    assert not by["layercam @ stage:-3"]["eligible"]
    assert any("seed 0" in r and "0.420 > 0.40" in r for r in by["layercam @ stage:-3"]["reasons"])
    assert by["random @ cam_layer"]["reasons"] == ["a control, never a default"]
    assert out["problems"] == [] and "integratedgradients" in out["verdict"]


def test_one_bad_seed_is_enough_to_exclude() -> None:
    tables = [table(0, [row("a", 0.2, 0.1), row("b", 0.1, 0.1)]), table(1, [row("a", 0.2, 0.1), row("b", 0.1, 0.1)]),
              table(2, [row("a", 0.2, 0.45), row("b", 0.1, 0.1)])]
    assert select_default(tables)["chosen"]["label"] == "b"


def test_none_passes_says_so_with_reasons() -> None:
    tables = [table(s, [row("gradcam @ cam_layer", 0.13, 0.79), row("layercam @ stage:-3", 0.16, 0.45)]) for s in range(3)]
    out = select_default(tables)
    assert out["chosen"] is None and out["verdict"].startswith("NONE passes")
    assert all(c["reasons"] for c in out["candidates"])


def test_fewer_than_three_seeds_or_a_test_split_choose_nothing() -> None:
    good = [row("gradientshap", 0.12, 0.1)]
    two = select_default([table(0, good), table(1, good), table(1, good)])
    assert two["chosen"] is None and "2 distinct training seed" in two["verdict"]
    on_test = select_default([table(0, good), table(1, good), table(2, good, split="test")])
    assert on_test["chosen"] is None and "never chosen on test" in on_test["verdict"]
    assert select_default([])["chosen"] is None


def test_missing_sanity_or_missing_row_excludes() -> None:
    no_sanity = row("occlusion", 0.3, 0.1)
    del no_sanity["sanity"]
    tables = [table(0, [row("a", 0.1, 0.1), no_sanity]), table(1, [row("a", 0.1, 0.1), row("occlusion", 0.3, 0.1)]),
              table(2, [row("occlusion", 0.3, 0.1)])]
    out = select_default(tables)
    by = {c["label"]: c for c in out["candidates"]}
    assert "seed 0: no sanity checks" in by["occlusion"]["reasons"]
    assert "seed 2: not measured" in by["a"]["reasons"]
    assert out["chosen"] is None


def test_threshold_matches_the_sanity_module() -> None:
    from fetalplanes.explain import sanity

    assert selection.SURVIVAL_RHO == sanity.SURVIVAL_RHO and MARGIN == 0.1


def _sanity(median: float) -> dict:
    return {"checks": [{"name": "cascade: head randomized", "spearman_median": median}], "flagged": median >= SURVIVAL_RHO}


def test_shipped_default_is_checked_plainly() -> None:
    assert check_shipped(_sanity(0.506), "layercam @ stage:-3")["status"] == "FLAGGED"
    assert "must not be read as explanations" in check_shipped(_sanity(0.506), "x")["statement"]
    assert check_shipped(_sanity(0.418), "x")["status"] == "passes without margin"
    assert check_shipped(_sanity(0.2), "x")["status"] == "passes"
    assert check_shipped(None, "x")["status"] == "not checked"
