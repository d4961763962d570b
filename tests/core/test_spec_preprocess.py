"""ModelSpec round-trips and validation; the shared numpy preprocessing and post-processing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fetalplanes.core.classes import PLANES, classes_for_task
from fetalplanes.core.postprocess import decide, softmax
from fetalplanes.core.preprocess import preprocess, preprocess_batch, to_gray
from fetalplanes.core.spec import ModelSpec, Preprocessing


def make_spec(**kw) -> ModelSpec:
    base = dict(name="t", task="planes", class_names=PLANES, architecture={"backbone": "x"})
    base.update(kw)
    return ModelSpec(**base)


def test_spec_json_round_trip():
    spec = make_spec(preprocessing=Preprocessing(image_size=96, mean=(0.5,) * 3, std=(0.5,) * 3), temperature=1.7)
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec
    assert again.num_classes == 6


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"class_names": ()}, "class_names"),
        ({"class_names": ("a", "a")}, "duplicates"),
        ({"temperature": 0.0}, "temperature"),
        ({"abstain_threshold": 1.5}, "abstain_threshold"),
    ],
)
def test_spec_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        make_spec(**bad)


def test_spec_from_dict_lists_unknown_fields():
    d = make_spec().to_dict()
    d["colour"] = 1
    with pytest.raises(ValueError, match="model spec has unknown field.*colour.*valid fields"):
        ModelSpec.from_dict(d)


def test_spec_round_trip_carries_the_current_format_version():
    from fetalplanes.core.spec import SPEC_FORMAT_VERSION

    spec = make_spec()
    assert spec.format_version == SPEC_FORMAT_VERSION
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_newer_minor_version_loads_with_a_warning_naming_unknown_fields(caplog):
    from fetalplanes.core.spec import SPEC_FORMAT_VERSION

    major, minor = SPEC_FORMAT_VERSION.split(".")
    d = make_spec().to_dict()
    d.update(format_version=f"{major}.{int(minor) + 1}", scanner_vendor="X")
    d["preprocessing"]["gamma"] = 1.0
    with caplog.at_level("WARNING"):
        spec = ModelSpec.from_dict(d, "new.onnx")
    assert spec == make_spec()
    text = caplog.text
    assert "scanner_vendor" in text and "gamma" in text and "new.onnx" in text


def test_newer_major_version_is_refused_with_the_reader_version():
    d = make_spec().to_dict()
    d["format_version"] = "99.0"
    with pytest.raises(ValueError, match="x.onnx.*99.0.*newer fetalplanes"):
        ModelSpec.from_dict(d, "x.onnx")


def test_unversioned_spec_migrates_the_explain_section():
    d = make_spec().to_dict()
    del d["format_version"], d["explain"]
    d["training"] = {"seed": 3, "explain": {"method": "layercam", "layer": "stage:-3"}}
    spec = ModelSpec.from_dict(d)
    assert spec.explain == {"method": "layercam", "layer": "stage:-3"}
    assert spec.training == {"seed": 3}


def test_unknown_task_lists_choices():
    with pytest.raises(ValueError, match="choose one of"):
        classes_for_task("heart")


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16", "P"])
def test_preprocess_shape_dtype_and_normalization(mode):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (50, 70), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode == "I;16":
        img = Image.fromarray((arr.astype(np.uint16) * 257))
    elif mode != "L":
        img = img.convert(mode)
    pre = Preprocessing(image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    x = preprocess(img, pre)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    assert np.allclose(x[0], x[1]) and np.allclose(x[1], x[2])  # gray replicated
    assert -2.0 - 1e-6 <= x.min() and x.max() <= 2.0 + 1e-6  # (0-0.5)/0.25 .. (1-0.5)/0.25


def test_to_gray_16bit_scales_by_bit_depth():
    arr = np.array([[1000, 2000], [3000, 65535]], dtype=np.uint16)
    g = np.asarray(to_gray(Image.fromarray(arr)))
    assert g.tolist() == [[4, 8], [12, 255]]  # v / 257, never stretched to the image's min/max


def test_preprocess_batch_stacks():
    pre = Preprocessing(image_size=16)
    imgs = [Image.new("L", (20, 10), c) for c in (0, 128, 255)]
    x = preprocess_batch(imgs, pre)
    assert x.shape == (3, 3, 16, 16)
    assert x[0].mean() < x[1].mean() < x[2].mean()
    assert preprocess_batch([], pre).shape == (0, 3, 16, 16)


def test_softmax_temperature_flattens():
    logits = np.array([[2.0, 0.0, -1.0]])
    p1, p3 = softmax(logits, 1.0), softmax(logits, 3.0)
    assert np.allclose(p1.sum(), 1) and np.allclose(p3.sum(), 1)
    assert p3.max() < p1.max()


def test_decide_topk_and_abstain():
    probs = np.array([[0.1, 0.6, 0.3], [0.4, 0.35, 0.25]])
    preds = decide(probs, ["a", "b", "c"], k=2, abstain_threshold=0.5)
    assert preds[0].label == "b" and [c for c, _ in preds[0].topk] == ["b", "c"] and not preds[0].abstain
    assert preds[1].label == "a" and preds[1].abstain
    with pytest.raises(ValueError, match="class names"):
        decide(probs, ["a", "b"])


def test_transparent_pixels_composite_strip_by_strip_like_the_whole_image(monkeypatch) -> None:
    """Large RGBA uploads are composited in strips (memory); the pixels equal one whole composite."""
    import numpy as np
    from PIL import Image

    from fetalplanes.core import preprocess

    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (203, 117, 4), dtype=np.uint8), "RGBA")
    whole = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("L")
    monkeypatch.setattr(preprocess, "_STRIP_PIXELS", 117 * 10)  # 21 strips, the last one short
    assert np.array_equal(np.asarray(preprocess.to_gray(rgba)), np.asarray(whole))
    palette = rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 3
    want = Image.alpha_composite(Image.new("RGBA", palette.size, (0, 0, 0, 255)), palette.convert("RGBA")).convert("L")
    assert np.array_equal(np.asarray(preprocess.to_gray(palette)), np.asarray(want))
