"""A model trained on the synthetic phantoms looks at the phantom's structure: its maps score
above chance on the masks that ship with the set, and random maps do not pass the same bar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fetalplanes.explain import localization as loc


def passes(summary: dict) -> bool:
    """The bar: pointing game clearly above a random peak, energy share above a flat map."""
    pg, en = summary["pointing_game"], summary["energy_share"]
    return pg["hit_rate"] >= pg["chance_uniform"] + 0.2 and en["mean"] > en["chance_uniform"] + 0.03


@pytest.mark.slow
def test_trained_model_points_at_the_structure(tmp_path: Path, trainer) -> None:
    from fetalplanes.data.synth import synthesize
    from fetalplanes.explain.pipeline import explain

    # 20 phantoms per class and 128 px: the session's 8-per-class set trains a model near chance
    # accuracy (nothing to localize), and at 64 px the last feature maps are 2x2.
    data = synthesize(tmp_path / "db", per_class=20, seed=2, image_size=(160, 128))
    ckpt = trainer(data, tmp_path / "run", **{"optim.max_epochs": 6, "data.image_size": 128})
    out = tmp_path / "expl"
    # The layer and method that localize on demo models (docs/explain.md); the model's declared
    # layer (the attention output) does not, which this test does not hide: see the docs.
    summary = explain(ckpt, out, data=data, split="test", method="eigencam", layer="stage:-2", occlusion=24)
    report = json.loads((out / "localization.json").read_text())
    assert report["n_with_mask"] == summary["n"] >= 30
    cam, occ = report["maps"]["eigencam"], report["maps"]["occlusion"]
    assert passes(cam), cam
    assert passes(occ), occ

    # Control: random maps on the very same masks must fail the bar.
    rng = np.random.default_rng(0)
    rows = []
    for rec in json.loads((out / "explanations.json").read_text())["images"]:
        mask = loc.load_mask(rec["localization"]["mask"], tuple(rec["size"]))
        rows.append(loc.score_one(rng.random(mask.shape).astype(np.float32), mask))
    assert not passes(loc.summarize(rows))
