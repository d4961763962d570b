"""Randomization sanity checks (Adebayo et al. 2018): maps that survive them are flagged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fetalplanes.explain import sanity
from fetalplanes.training.config import load_config


class Tiny(nn.Module):
    """backbone -> attention -> head, like PlaneClassifier, small enough for unit tests."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.attention = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=(2, 3)))


def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_spearman_of_maps() -> None:
    a = np.arange(120, dtype=np.float32).reshape(10, 12)
    assert sanity.spearman(a, a) == pytest.approx(1.0)
    assert sanity.spearman(a, -a) == pytest.approx(-1.0)
    assert sanity.spearman(a, np.zeros_like(a)) is None  # a constant map has no ranking
    with pytest.raises(ValueError, match="shapes differ"):
        sanity.spearman(a, a.T)


def test_randomized_copy_redraws_only_the_named_parts() -> None:
    torch.manual_seed(0)
    model = Tiny().eval()
    before = {n: _params(getattr(model, n)) for n in ("backbone", "attention", "head")}
    head_only = sanity.randomized_copy(model, ("head",), seed=1)
    assert all(torch.equal(a, b) for a, b in zip(_params(head_only.backbone), before["backbone"]))
    assert not all(torch.equal(a, b) for a, b in zip(_params(head_only.head), before["head"]))
    everything = sanity.randomized_copy(model, None, seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(_params(everything.backbone), before["backbone"]))
    for name, params in before.items():  # the original is untouched
        assert all(torch.equal(a, b) for a, b in zip(_params(getattr(model, name)), params))
    again = sanity.randomized_copy(model, ("head",), seed=1)  # deterministic for a seed
    assert all(torch.equal(a, b) for a, b in zip(_params(again.head), _params(head_only.head)))
    with pytest.raises(ValueError, match="parts are"):
        sanity.randomized_copy(model, ("classifier",))


def _cam_map(model: nn.Module, image: np.ndarray, target: str) -> np.ndarray:
    """Class activation map (Zhou et al. 2016): head weights of the target x feature maps."""
    with torch.no_grad():
        fmap = model.forward_features(torch.from_numpy(image)[None])[0]
        return torch.relu((model.head.weight[int(target)][:, None, None] * fmap).sum(0)).numpy()


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((3, 16, 16)).astype(np.float32) for _ in range(n)]


def test_maps_of_the_trained_model_change_and_are_not_flagged() -> None:
    torch.manual_seed(0)
    model, images = Tiny().eval(), _images(6)
    trained = [_cam_map(model, im, "0") for im in images]
    inputs = torch.from_numpy(np.stack(images))
    report = sanity.run_checks(model, images, trained, ["0"] * 6, _cam_map, labels=[0, 1, 2, 0, 1, 2], inputs=inputs)
    names = [c["name"] for c in report["checks"]]
    assert names[:3] == ["cascade: head randomized", "cascade: head+attention randomized", "cascade: whole model randomized"]
    assert "labels permuted" in names[3] and 0.0 <= report["checks"][3]["train_accuracy_on_permuted_labels"] <= 1.0
    whole = report["checks"][2]
    assert not whole["survives"] and whole["spearman_median"] < sanity.SURVIVAL_RHO
    assert len(whole["per_image"]) == 6


def test_a_model_free_map_survives_randomization_and_is_flagged() -> None:
    torch.manual_seed(0)
    model, images = Tiny().eval(), _images(5)

    def brightness(_model: nn.Module, image: np.ndarray, _target: str) -> np.ndarray:
        return image.mean(0)  # never looks at the model

    report = sanity.run_checks(model, images, [im.mean(0) for im in images], ["0"] * 5, brightness)
    assert report["flagged"] and all(c["survives"] for c in report["checks"])
    assert report["verdict"].startswith("FLAGGED")


def test_a_randomized_models_maps_are_flagged() -> None:
    """Maps that really come from a randomized model (not the trained one) survive the same randomization."""
    torch.manual_seed(0)
    model, images = Tiny().eval(), _images(5)
    shown = sanity.randomized_copy(model, None, seed=0)
    maps = [_cam_map(shown, im, "1") for im in images]
    report = sanity.run_checks(model, images, maps, ["1"] * 5, _cam_map, seed=0)
    whole = next(c for c in report["checks"] if c["name"] == "cascade: whole model randomized")
    assert whole["survives"] and whole["spearman_median"] == pytest.approx(1.0)
    assert report["flagged"]


@pytest.mark.parametrize(("n", "small"), [(sanity.MIN_IMAGES - 1, True), (sanity.MIN_IMAGES, False)])
def test_few_images_make_the_verdict_say_it_is_indicative(n: int, small: bool) -> None:
    torch.manual_seed(0)
    model, images = Tiny().eval(), _images(n)
    report = sanity.run_checks(model, images, [_cam_map(model, im, "0") for im in images], ["0"] * n, _cam_map)
    assert report["small_sample"] is small
    assert ("indicative, not evidence" in report["verdict"]) is small
    assert report["verdict"].startswith("the maps change") or report["verdict"].startswith("FLAGGED")


def test_explain_sanity_writes_reports(tiny_checkpoint: Path, synth_data: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fetalplanes.cli import app
    from fetalplanes.cli.explain import register

    if "explain" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        register(app)
    out = tmp_path / "expl"
    res = CliRunner().invoke(app, ["explain", "--checkpoint", str(tiny_checkpoint), "--data", str(synth_data),
                                   "--out", str(out), "--limit", "6", "--sanity", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "sanity: cascade: whole model randomized: median Spearman" in res.output
    assert "centre" in res.output and "pointing game: model" in res.output
    rep = json.loads((out / "sanity.json").read_text())
    assert rep["n_images"] == 6 and rep["method"] == load_config("demo").explain.method  # the model's own setting
    assert {c["name"] for c in rep["checks"]} >= {"cascade: head randomized", "cascade: whole model randomized"}
    whole = next(c for c in rep["checks"] if c["name"] == "cascade: whole model randomized")
    assert not whole["survives"], whole  # the trained maps change when every weight is re-drawn
    loc = json.loads((out / "localization.json").read_text())
    assert loc["sanity"]["checks"] == rep["checks"] and loc["priors"]["n"] + loc["priors"]["n_empty_maps"] == 6
    page = (out / "index.html").read_text()
    assert "Sanity checks (6 images)" in page and "Does the heat map beat a map that ignores the image?" in page
