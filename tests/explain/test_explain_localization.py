"""A model trained on the synthetic phantoms looks at the phantom's structure: its maps beat the
uniform and centre priors on the masks that ship with the set, and model-free maps do not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fetalplanes.explain import localization as loc
from fetalplanes.explain import priors


def passes(summary: dict) -> bool:
    """The bar: the map beats the uniform AND the centre prior on pointing game and energy share,
    with non-overlapping 95 % intervals (``explain.priors``)."""
    return bool(summary["beats_priors"])


@pytest.mark.slow
def test_trained_model_points_at_the_structure(tmp_path: Path, trainer) -> None:
    from fetalplanes.data.synth import synthesize
    from fetalplanes.explain.pipeline import explain

    # 20 phantoms per class and 128 px: the session's 8-per-class set trains a model near chance
    # accuracy (nothing to localize), and at 64 px the last feature maps are 2x2.
    data = synthesize(tmp_path / "db", per_class=20, seed=2, image_size=(160, 128))
    ckpt = trainer(data, tmp_path / "run", **{"optim.max_epochs": 6, "data.image_size": 128})
    out = tmp_path / "expl"
    # Occlusion is the model-agnostic map; the phantoms put the structure anywhere in the fan,
    # so a map that only looks at the middle cannot pass.
    summary = explain(ckpt, out, data=data, split="test", occlusion=48)
    report = json.loads((out / "localization.json").read_text())
    assert report["n_with_mask"] == summary["n"] >= 30
    assert report["priors"]["pointing_game"]["centre"]["mean"] < 0.5
    occ_rows = []
    for rec in json.loads((out / "explanations.json").read_text())["images"]:
        if "occlusion" in rec:
            mask = loc.load_mask(rec["localization"]["mask"], tuple(rec["size"]))
            occ_rows.append(priors.score_row(np.load(out / rec["occlusion"]["cam"]), mask))
    assert passes(priors.compare(occ_rows)), priors.compare(occ_rows)["verdict"]

    # Controls: maps that ignore the image must fail the same bar on the very same masks.
    rng = np.random.default_rng(0)
    for make in (lambda shape: rng.random(shape).astype(np.float32), loc.center_prior):
        rows = []
        for rec in json.loads((out / "explanations.json").read_text())["images"]:
            mask = loc.load_mask(rec["localization"]["mask"], tuple(rec["size"]))
            rows.append(priors.score_row(make(mask.shape), mask))
        assert not passes(priors.compare(rows))
