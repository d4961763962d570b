"""captum input attributions (GradientSHAP, Integrated Gradients, occlusion) as heat maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fetalplanes.core.cam_methods import ATTRIBUTION_METHOD_NAMES, CAM_METHOD_NAMES, METHOD_NAMES, check_method
from fetalplanes.core.classes import PLANES
from fetalplanes.core.spec import ModelSpec, Preprocessing
from fetalplanes.explain import localization as loc
from fetalplanes.explain.attribution import ATTRIBUTORS, compute_attribution, heat_map
from fetalplanes.explain.maps import check_options, compute_map
from fetalplanes.models import create_model

CLASSES = ("a", "b", "c")


def toy_spec(size: int = 32, classes=CLASSES) -> ModelSpec:
    return ModelSpec(name="toy", task="planes", class_names=tuple(classes), architecture={},
                     preprocessing=Preprocessing(image_size=size, mean=(0.5,) * 3, std=(0.5,) * 3))


def box_image() -> tuple[Image.Image, np.ndarray]:
    """A 64x48 image whose bright box is the model's region (input rows 4-12, cols 20-28 of 32)."""
    mask = np.zeros((48, 64), bool)
    mask[6:18, 40:56] = True
    arr = np.where(mask, 230, 40).astype(np.uint8)
    return Image.fromarray(arr), mask


def test_heat_map_rule() -> None:
    a = np.zeros((3, 10, 10), np.float32)
    a[:, 2, 3] = 1.0  # channels are summed: 3.0
    a[0, 5, 5] = -4.0  # negative evidence is dropped
    a[1, 7, 7] = 0.5
    h = heat_map(a)
    assert h.shape == (10, 10) and h.dtype == np.float32
    assert h[5, 5] == 0.0 and h[2, 3] == pytest.approx(1.0) and 0.0 < h[7, 7] < 1.0
    assert h.min() >= 0.0 and h.max() <= 1.0
    assert not heat_map(-np.abs(a)).any()  # no evidence for the class: an all-zero map
    # Heavy tail: one huge pixel does not black out the rest (98th-percentile scaling, clipped).
    b = np.ones((100, 100), np.float32)
    b[0, 0] = 1e6
    assert heat_map(b).mean() > 0.99


@pytest.mark.parametrize("method", ATTRIBUTION_METHOD_NAMES)
def test_attribution_points_at_the_region_the_model_reads(method: str, region_model) -> None:
    image, mask = box_image()
    model = region_model((4, 12, 20, 28))
    res = compute_attribution(model, toy_spec(), image, method, target="a")
    assert res.cam.shape == mask.shape and res.cam.dtype == np.float32
    assert res.method == method and res.target == "a" and res.extra["layer"] == "input"
    assert 0.0 <= res.cam.min() and res.cam.max() <= 1.0
    assert loc.pointing_hit(res.cam, mask)
    assert loc.energy_share(res.cam, mask) > 0.8  # the model reads nothing outside its box


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    model = create_model("paper_lite0", len(PLANES), pretrained=False).eval()
    spec = ModelSpec(name="t", task="planes", class_names=tuple(PLANES), architecture=dict(model.config),
                     preprocessing=Preprocessing(image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3))
    return model, spec


def scan(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 80, (70, 90)).astype(np.uint8)
    arr[17:35, 30:45] = 230
    return Image.fromarray(arr)


@pytest.mark.parametrize("method", ATTRIBUTION_METHOD_NAMES)
def test_registry_model_attribution_is_deterministic_and_leaves_the_model_alone(lite0, method: str) -> None:
    model, spec = lite0
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    first = compute_map(model, spec, scan(), method, target="Fetal brain")
    again = compute_map(model, spec, scan(), method, target="Fetal brain")
    assert model.training  # mode restored
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model.eval()
    assert first.cam.shape == (70, 90) and np.isfinite(first.cam).all()
    assert first.target == "Fetal brain" and first.probs.sum() == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_array_equal(first.cam, again.cam)  # seeded: the same map twice


def test_gradientshap_seed_changes_the_draws(lite0) -> None:
    model, spec = lite0
    a = compute_attribution(model, spec, scan(), "gradientshap", seed=0).cam
    b = compute_attribution(model, spec, scan(), "gradientshap", seed=1).cam
    assert not np.array_equal(a, b)


def test_one_method_table_everywhere() -> None:
    from fetalplanes.explain.cam import METHODS
    from fetalplanes.explain.overlay import METHOD_TITLES

    assert set(CAM_METHOD_NAMES) == set(METHODS)
    assert set(ATTRIBUTION_METHOD_NAMES) == set(ATTRIBUTORS)
    assert set(METHOD_NAMES) == set(CAM_METHOD_NAMES) | set(ATTRIBUTION_METHOD_NAMES)
    assert set(METHOD_NAMES) <= set(METHOD_TITLES)
    with pytest.raises(ValueError, match="gradientshap"):  # the error lists the attribution methods too
        check_method("shap")


def test_attribution_and_cam_names_are_not_mixed_up(lite0) -> None:
    from fetalplanes.explain.cam import get_method

    model, spec = lite0
    with pytest.raises(ValueError, match="not a CAM method"):
        get_method("gradientshap")
    with pytest.raises(ValueError, match="not an input attribution"):
        compute_attribution(model, spec, scan(), "gradcam")
    with pytest.raises(ValueError, match="CAM methods only"):
        check_options("integratedgradients", "stage:-3", None)
    with pytest.raises(ValueError, match="CAM methods only"):
        check_options("occlusion", None, True)
    check_options("gradcam", "stage:-3", True)  # fine for a CAM


def test_a_config_may_ship_an_attribution_default() -> None:
    from fetalplanes.training.config import load_config

    assert load_config("demo", {"explain.method": "GradientSHAP"}).explain.method == "gradientshap"


def test_sanity_checks_run_for_an_attribution_method(lite0) -> None:
    """The randomized models are explained with the same attribution (explain.maps.compute_map)."""
    from fetalplanes.explain.sanity import check_explanations

    model, spec = lite0
    images = [scan(i) for i in range(3)]
    results = [compute_map(model, spec, im, "integratedgradients") for im in images]
    report = check_explanations(model, spec, images, results, "integratedgradients", "input", False, [0, 1, 2])
    names = [c["name"] for c in report["checks"]]
    assert any("whole model" in n for n in names) and any("permuted" in n for n in names)
    whole = next(c for c in report["checks"] if "whole model" in c["name"])
    assert len(whole["per_image"]) == 3
    assert report["method"] == "integratedgradients" and report["small_sample"]
