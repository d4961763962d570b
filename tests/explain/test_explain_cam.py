"""compute_cam on every registry preset, frozen backbones, DICOM input and bad arguments.

Models are untrained (pretrained=False) at 64 px: these tests check plumbing and invariants
(size, range, no gradient failure), not what a trained model looks at.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
import torch
from PIL import Image

from fetalplanes.core.classes import PLANES
from fetalplanes.core.spec import ModelSpec, Preprocessing
from fetalplanes.explain import METHODS, CamResult, compute_cam
from fetalplanes.models import create_model, list_presets
from fetalplanes.models.attention import ATTENTIONS

SIZE = 64


def make_spec(model, size: int = SIZE) -> ModelSpec:
    return ModelSpec(name="t", task="planes", class_names=tuple(PLANES), architecture=dict(model.config),
                     preprocessing=Preprocessing(image_size=size, mean=(0.5,) * 3, std=(0.5,) * 3))


def scan(w: int = 90, h: int = 70, seed: int = 0, mode: str = "L") -> Image.Image:
    """A non-square speckle image with a bright blob (different aspect than the 64x64 input)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 80, (h, w)).astype(np.uint8)
    arr[h // 4 : h // 2, w // 3 : w // 2] = 230
    return Image.fromarray(arr).convert(mode)


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    model = create_model("paper_lite0", len(PLANES), pretrained=False).eval()
    return model, make_spec(model)


def check(result: CamResult, image: Image.Image, spec: ModelSpec) -> None:
    assert isinstance(result, CamResult)
    assert result.cam.shape == (image.height, image.width)
    assert result.cam.dtype == np.float32
    assert np.isfinite(result.cam).all()
    assert result.cam.min() >= 0.0 and result.cam.max() <= 1.0
    assert result.probs.shape == (spec.num_classes,)
    assert result.probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert result.label in spec.class_names and result.target in spec.class_names
    assert result.confidence == pytest.approx(float(result.probs.max()))


@pytest.mark.parametrize("name", list_presets())
def test_every_registry_preset_gives_a_cam_at_the_original_size(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, len(PLANES), pretrained=False).eval()
    spec = make_spec(model)
    image = scan(77, 51)
    result = compute_cam(model, spec, image)
    check(result, image, spec)
    assert result.target == result.label  # default target: the predicted class
    # A random model may have no positive evidence for one class (ReLU -> all zeros), but a
    # gradient that reaches the CAM layer gives a non-zero map for some class.
    assert any(compute_cam(model, spec, image, target=t).cam.max() > 0 for t in range(spec.num_classes))


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"scorecam"}))
def test_each_method_runs(lite0, method: str) -> None:
    model, spec = lite0
    image = scan()
    result = compute_cam(model, spec, image, method=method)
    check(result, image, spec)
    assert result.method == method


@pytest.mark.slow
def test_scorecam_runs(lite0) -> None:
    model, spec = lite0
    check(compute_cam(model, spec, scan(), method="scorecam"), scan(), spec)


@pytest.mark.parametrize("attention", sorted(ATTENTIONS))
def test_frozen_backbone_gives_the_same_map_as_the_trainable_model(attention: str) -> None:
    """With a frozen backbone and no attention weights the CAM layer output has no grad.

    The fix must be exact: same weights, same map, and no parameter flag left changed.
    """
    torch.manual_seed(0)
    full = create_model("paper_lite0", len(PLANES), pretrained=False, attention=attention).eval()
    frozen = create_model("paper_lite0", len(PLANES), pretrained=False, attention=attention, finetune="frozen")
    frozen.load_state_dict(full.state_dict())
    frozen.train()  # the caller's mode must survive the call
    before = frozen.param_counts()
    spec = make_spec(full)
    image = scan()
    ref = compute_cam(full, spec, image)
    got = compute_cam(frozen, spec, image)
    check(got, image, spec)
    assert got.cam.max() > 0
    np.testing.assert_allclose(got.cam, ref.cam, atol=1e-4)
    np.testing.assert_allclose(got.probs, ref.probs, atol=1e-5)
    assert frozen.param_counts() == before and before["trainable"] < before["total"]
    assert frozen.training


def test_works_inside_the_callers_inference_mode(lite0) -> None:
    model, spec = lite0
    with torch.inference_mode():
        result = compute_cam(model, spec, scan())
    assert result.cam.max() > 0


def test_target_by_name_and_index(lite0) -> None:
    model, spec = lite0
    image = scan()
    by_name = compute_cam(model, spec, image, target="Fetal femur")
    by_index = compute_cam(model, spec, image, target=spec.class_names.index("Fetal femur"))
    assert by_name.target == by_index.target == "Fetal femur"
    np.testing.assert_allclose(by_name.cam, by_index.cam, atol=1e-5)
    other = next(c for c in spec.class_names if c != by_name.label)
    assert compute_cam(model, spec, image, target=other).label == by_name.label  # prediction unchanged


def test_bad_method_and_target_list_the_valid_choices(lite0) -> None:
    model, spec = lite0
    with pytest.raises(ValueError, match="gradcam\\+\\+"):
        compute_cam(model, spec, scan(), method="gradcamm")
    with pytest.raises(ValueError, match="Fetal brain"):
        compute_cam(model, spec, scan(), target="Fetal heart")
    with pytest.raises(ValueError, match="cam_layer"):
        compute_cam(torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()),
                    spec, scan())


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
def test_any_loaded_mode_works(lite0, mode: str) -> None:
    model, spec = lite0
    image = scan(mode="L")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image, dtype=np.uint16) * 200)
    else:
        image = image.convert(mode)
    check(compute_cam(model, spec, image), image, spec)


def test_dicom_input_is_explained(lite0, tmp_path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from fetalplanes.core.io import load_image

    arr = (np.asarray(scan(83, 61), dtype=np.uint16) * 100).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # US Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = arr.tobytes()
    path = tmp_path / "scan.dcm"
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())

    model, spec = lite0
    image = load_image(path)
    assert image.size == (83, 61)
    result = compute_cam(model, spec, image)
    check(result, image, spec)


@pytest.mark.parametrize("layer", ["cam_layer", "stage:-2", "stage:-1", "attention", "stage:-3,stage:-2"])
def test_layer_choice_is_generic(lite0, layer: str) -> None:
    model, spec = lite0
    image = scan()
    result = compute_cam(model, spec, image, layer=layer)
    check(result, image, spec)
    assert result.extra["layer"] == layer


def test_multi_layer_smoothed_cam(lite0) -> None:
    model, spec = lite0
    image = scan()
    plain = compute_cam(model, spec, image, method="layercam", layer=["stage:-3", "stage:-2"])
    smooth = compute_cam(model, spec, image, method="layercam", layer="stage:-3,stage:-2", aug_smooth=True)
    check(smooth, image, spec)
    assert smooth.extra == {"layer": "stage:-3,stage:-2", "aug_smooth": True}
    assert not np.allclose(plain.cam, smooth.cam)  # the augmentations really were averaged in
    np.testing.assert_allclose(plain.probs, smooth.probs, atol=1e-5)  # prediction from the plain input


def test_declared_layer_is_the_default(lite0) -> None:
    model, spec = lite0
    image = scan()
    np.testing.assert_allclose(compute_cam(model, spec, image).cam, compute_cam(model, spec, image, layer="cam_layer").cam,
                               atol=1e-5)


def test_checkpoint_explain_settings_are_the_default(lite0) -> None:
    from dataclasses import replace

    model, spec = lite0
    spec = replace(spec, training={"explain": {"method": "layercam", "layer": "stage:-3"}})
    image = scan()
    result = compute_cam(model, spec, image)
    assert result.method == "layercam" and result.extra["layer"] == "stage:-3"
    # Same map up to float noise (oneDNN may pick different kernels from one call to the next).
    np.testing.assert_allclose(result.cam, compute_cam(model, spec, image, method="layercam", layer="stage:-3").cam,
                               atol=1e-5)
    # An explicit argument still wins over the checkpoint's setting.
    assert compute_cam(model, spec, image, method="gradcam", layer="cam_layer").extra["layer"] == "cam_layer"


def test_bad_layer_names_are_explained(lite0) -> None:
    model, spec = lite0
    with pytest.raises(ValueError, match="backbone"):
        compute_cam(model, spec, scan(), layer="backbone.nope")
    with pytest.raises(ValueError, match="stage:N"):
        compute_cam(model, spec, scan(), layer="stage:99")
    unused = torch.nn.Conv2d(3, 3, 1)
    model.add_module("unused_probe", unused)
    try:
        with pytest.raises(ValueError, match="no activation"):
            compute_cam(model, spec, scan(), layer="unused_probe")
    finally:
        del model.unused_probe


def test_config_method_names_match_the_library_table() -> None:
    from fetalplanes.core.cam_methods import CAM_METHOD_NAMES

    assert set(CAM_METHOD_NAMES) == set(METHODS)


def test_a_config_with_an_unknown_cam_method_fails_when_loaded() -> None:
    from fetalplanes.training.config import load_config

    from fetalplanes.core.cam_methods import METHOD_NAMES

    assert load_config("demo").explain.method in METHOD_NAMES  # the shipped config loads
    with pytest.raises(ValueError, match="gradkam.*choose one of"):
        load_config("demo", {"explain.method": "gradkam"})
