"""Localization against model-free priors: a map that ignores the image must never pass the bar."""

from __future__ import annotations

import numpy as np
import pytest

from fetalplanes.explain import localization as loc
from fetalplanes.explain import priors

SHAPE = (48, 64)


def _masks(n: int, seed: int = 0) -> list[np.ndarray]:
    """Square structures anywhere in the image (as the phantoms now are)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = np.zeros(SHAPE, bool)
        y, x = rng.integers(6, SHAPE[0] - 6), rng.integers(6, SHAPE[1] - 6)
        m[y - 5:y + 6, x - 5:x + 6] = True
        out.append(m)
    return out


def _pointing_map(mask: np.ndarray) -> np.ndarray:
    """A 'model' that looks at the structure: a blob on the mask's centroid."""
    ys, xs = np.nonzero(mask)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    return np.exp(-((yy - ys.mean()) ** 2 + (xx - xs.mean()) ** 2) / 30.0).astype(np.float32)


def test_a_map_that_looks_at_the_structure_beats_both_priors() -> None:
    masks = _masks(60)
    cmp = priors.compare([priors.score_row(_pointing_map(m), m) for m in masks])
    assert cmp["n"] == 60 and cmp["beats_priors"]
    pg = cmp["pointing_game"]
    assert pg["model"]["mean"] == 1.0 and pg["centre"]["mean"] < 0.5
    assert pg["model"]["ci95"][0] > pg["centre"]["ci95"][1]
    assert "beats the uniform and centre priors" in cmp["verdict"]


@pytest.mark.parametrize("name", ["centre prior", "flat map", "random noise", "image edge"])
def test_model_free_maps_fail_the_bar(name: str) -> None:
    rng = np.random.default_rng(1)
    maps = {
        "centre prior": lambda m: loc.center_prior(SHAPE),
        "flat map": lambda m: np.full(SHAPE, 0.5, np.float32),
        "random noise": lambda m: rng.random(SHAPE).astype(np.float32),
        "image edge": lambda m: np.pad(np.zeros((SHAPE[0] - 8, SHAPE[1] - 8), np.float32), 4, constant_values=1.0),
    }
    cmp = priors.compare([priors.score_row(maps[name](m), m) for m in _masks(60)])
    assert not cmp["beats_priors"], cmp["verdict"]
    assert "does NOT beat" in cmp["verdict"]


def test_uniform_prior_is_the_mask_area_and_intervals_hold_the_mean() -> None:
    masks = _masks(40, seed=3)
    cmp = priors.compare([priors.score_row(_pointing_map(m), m) for m in masks])
    area = float(np.mean([m.mean() for m in masks]))
    for score in priors.SCORES:
        s = cmp[score]
        assert s["uniform"]["mean"] == pytest.approx(area)
        for name in ("model", "uniform", "centre"):
            lo, hi = s[name]["ci95"]
            assert lo <= s[name]["mean"] <= hi
        d = s["vs_centre"]
        assert d["difference_ci95"][0] <= d["difference"] <= d["difference_ci95"][1]
    assert cmp == priors.compare([priors.score_row(_pointing_map(m), m) for m in masks])  # deterministic


def test_empty_maps_are_left_out_for_model_and_priors_alike() -> None:
    masks = _masks(10)
    rows = [priors.score_row(np.zeros(SHAPE, np.float32), m) for m in masks[:3]]
    rows += [priors.score_row(_pointing_map(m), m) for m in masks[3:]]
    cmp = priors.compare(rows)
    assert (cmp["n"], cmp["n_empty_maps"]) == (7, 3)
    empty = priors.compare(rows[:3])
    assert empty["n"] == 0 and not empty["beats_priors"]
    with pytest.raises(ValueError, match="shape"):
        priors.score_row(np.zeros((3, 3)), masks[0])


def test_report_shows_the_comparison_and_says_when_the_model_loses() -> None:
    from fetalplanes.explain.report import _priors_table

    masks = _masks(30)
    losing = priors.compare([priors.score_row(loc.center_prior(SHAPE), m) for m in masks])
    page = _priors_table(losing)
    assert "centre prior (centred Gaussian)" in page and "does NOT beat" in page and 'class="warn"' in page
    assert priors.lines(losing)[-1] == losing["verdict"]
    # Image-level intervals beside patient-level ones elsewhere: the unit is said where they are printed.
    assert losing["unit"] == "image" and priors.lines(losing)[-2].endswith("(95 % intervals over 30 images, not patients)")
