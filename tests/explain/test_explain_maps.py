"""Overlay drawing, occlusion sensitivity and the localization metrics, on hand-made data."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from fetalplanes.core.spec import ModelSpec, Preprocessing
from fetalplanes.explain import CamResult, overlay, overlay_png
from fetalplanes.explain import localization as loc
from fetalplanes.explain.occlusion import compute_occlusion
from fetalplanes.explain.overlay import jet

CLASSES = ("a", "b", "c")


def spec(size: int = 32) -> ModelSpec:
    return ModelSpec(name="toy", task="planes", class_names=CLASSES, architecture={},
                     preprocessing=Preprocessing(image_size=size, mean=(0.5,) * 3, std=(0.5,) * 3))


def result_for(h: int, w: int, cam: np.ndarray | None = None) -> CamResult:
    if cam is None:
        yy, xx = np.mgrid[0:h, 0:w]
        cam = np.exp(-((yy - h / 3) ** 2 + (xx - w / 2) ** 2) / (0.02 * h * w)).astype(np.float32)
    return CamResult(cam=cam, probs=np.array([0.7, 0.2, 0.1], np.float32), label="a", confidence=0.7,
                     target="a", method="gradcam")


# ------------------------------------------------------------------------------ overlay


@pytest.mark.parametrize("size", [(90, 70), (640, 392), (33, 200)])
@pytest.mark.parametrize("mode", ["L", "RGB", "I;16"])
def test_overlay_keeps_size_and_aspect(size: tuple[int, int], mode: str) -> None:
    w, h = size
    arr = np.random.default_rng(0).integers(0, 255, (h, w)).astype(np.uint8)
    image = Image.fromarray(arr if mode != "I;16" else arr.astype(np.uint16) * 250)
    image = image.convert(mode) if mode != "I;16" else image
    out = overlay(image, result_for(h, w), spec())
    assert out.mode == "RGB" and out.size == image.size
    decoded = Image.open(BytesIO(overlay_png(image, result_for(h, w), spec())))
    assert decoded.format == "PNG" and decoded.size == image.size


def test_overlay_colours_follow_the_map_and_caption_is_drawn() -> None:
    h, w = 200, 300
    image = Image.new("L", (w, h), 100)
    cam = np.zeros((h, w), np.float32)
    cam[150:190, 200:290] = 1.0
    plain = np.asarray(overlay(image, result_for(h, w, cam), spec(), annotate=False)).astype(int)
    hot, cold = plain[170, 245], plain[100, 100]
    assert hot[0] > hot[2] + 60  # red where the map is high
    assert cold[2] >= cold[0]  # blue-ish / grey where it is low
    assert abs(int(cold.mean()) - 100) < 40  # low evidence keeps the scan readable
    captioned = np.asarray(overlay(image, result_for(h, w, cam), spec()))
    assert (captioned[:20, :60] != plain[:20, :60]).any()  # caption box drawn at top-left


def test_overlay_rejects_a_mismatched_map() -> None:
    with pytest.raises(ValueError, match="does not match"):
        overlay(Image.new("L", (50, 40)), result_for(41, 50), spec())


def test_jet_endpoints() -> None:
    c = jet(np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(c[0], [0, 0, 1], atol=1e-6)  # blue at 0
    np.testing.assert_allclose(c[2], [1, 0, 0], atol=1e-6)  # red at 1
    assert c[1, 1] == pytest.approx(1.0)  # green in the middle


# ------------------------------------------------------------------------------ occlusion


def test_occlusion_geometry_is_checked_and_odd_strides_give_a_finite_map(region_model) -> None:
    s = spec(32)
    model = region_model((4, 12, 20, 28))
    image = Image.fromarray(np.full((32, 32), 128, np.uint8))
    with pytest.raises(ValueError, match="patch"):
        compute_occlusion(model, s, image, target="a", patch=40)
    res = compute_occlusion(model, s, image, target="a", patch=8, stride=5)  # 5 does not divide 32 - 8
    assert np.isfinite(res.cam).all() and res.cam.min() >= 0.0


def test_occlusion_peaks_where_the_model_looks(region_model) -> None:
    s = spec(32)
    model = region_model((4, 12, 20, 28))  # rows 4-12, cols 20-28 of the 32-px input
    mask = np.zeros((48, 64), bool)
    mask[6:18, 40:56] = True  # the box in original coordinates (x2 wide, x1.5 tall)
    image = Image.fromarray((mask * 255).astype(np.uint8))  # bright box: occluding it lowers 'a'
    res = compute_occlusion(model, s, image, target="a", patch=8, stride=4)
    assert res.cam.shape == (48, 64) and res.method == "occlusion"
    assert res.cam.min() >= 0 and res.cam.max() == pytest.approx(1.0)
    assert loc.pointing_hit(res.cam, mask)
    assert loc.energy_share(res.cam, mask) > 3 * mask.mean()
    assert res.target == "a" and res.label == "a"


# ------------------------------------------------------------------------------ localization


def test_pointing_and_energy_on_known_maps() -> None:
    mask = np.zeros((10, 20), bool)
    mask[2:5, 3:8] = True
    cam = np.zeros((10, 20), np.float32)
    cam[3, 4] = 1.0
    assert loc.pointing_hit(cam, mask) and loc.energy_share(cam, mask) == pytest.approx(1.0)
    cam[3, 4], cam[8, 15] = 0.0, 1.0
    assert not loc.pointing_hit(cam, mask) and loc.energy_share(cam, mask) == pytest.approx(0.0)
    flat = np.ones((10, 20), np.float32)
    assert loc.energy_share(flat, mask) == pytest.approx(mask.mean())  # uniform map = chance
    assert loc.energy_share(np.zeros((10, 20)), mask) is None
    with pytest.raises(ValueError, match="shape"):
        loc.pointing_hit(np.zeros((5, 5)), mask)


def test_summary_reports_chance_levels_beside_the_score() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(40):
        mask = np.zeros((30, 40), bool)
        r, c = rng.integers(0, 20), rng.integers(0, 30)
        mask[r : r + 8, c : c + 8] = True
        rows.append(loc.score_one(rng.random((30, 40)).astype(np.float32), mask))
    s = loc.summarize(rows)
    assert s["n"] == 40
    area = float(np.mean([r["area"] for r in rows]))
    assert s["pointing_game"]["chance_uniform"] == pytest.approx(area)
    # a random map sits at chance: energy share within a few points of the mask area
    assert abs(s["energy_share"]["mean"] - area) < 0.02
    assert 0.0 <= s["pointing_game"]["chance_center"] <= 1.0


def test_center_prior_peaks_in_the_middle() -> None:
    p = loc.center_prior((21, 41))
    assert np.unravel_index(np.argmax(p), p.shape) == (10, 20)
    assert p.max() == pytest.approx(1.0) and p.min() > 0


def test_find_mask_by_stem_never_returns_the_image_itself(tmp_path) -> None:
    Image.new("L", (8, 6)).save(tmp_path / "001_HC.png")
    rgb = Image.new("RGB", (8, 6))
    rgb.putpixel((2, 3), (255, 255, 255))
    rgb.save(tmp_path / "001_HC_Mask.png")
    found = loc.find_mask("001_HC", [tmp_path], image=tmp_path / "001_HC.png")
    assert found == tmp_path / "001_HC_Mask.png"
    assert loc.find_mask("001_HC_Mask", [tmp_path], image=tmp_path / "001_HC_Mask.png") is None
    mask = loc.load_mask(found)
    assert mask.dtype == bool and mask.shape == (6, 8) and mask.sum() == 1 and mask[3, 2]
    assert loc.load_mask(found, size=(16, 12)).shape == (12, 16)
