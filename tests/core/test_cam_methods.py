"""The one heat-map settings schema (``core.cam_methods.HeatMapSettings``): what a training
config validates, what a model file stores as ``spec.explain`` and what explain / serve read back."""

from __future__ import annotations

import dataclasses

import pytest

from fetalplanes.core.cam_methods import METHOD_NAMES, HeatMapSettings
from fetalplanes.core.errors import UsageError
from fetalplanes.core.spec import ModelSpec, Preprocessing


def _spec(**fields) -> ModelSpec:
    return ModelSpec(name="m", task="planes", class_names=("a", "b"), architecture={},
                     preprocessing=Preprocessing(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3), **fields)


def test_method_is_checked_and_lower_cased() -> None:
    assert HeatMapSettings(method="GradCAM++").method == "gradcam++"
    with pytest.raises(UsageError, match="gradkam.*choose one of"):
        HeatMapSettings(method="gradkam")
    assert {HeatMapSettings(method=m).method for m in METHOD_NAMES} == set(METHOD_NAMES)


def test_stored_section_round_trips_and_old_files_fall_back() -> None:
    chosen = HeatMapSettings(method="layercam", layer="stage:-2", aug_smooth=True)
    assert HeatMapSettings.from_spec(_spec(explain=chosen.to_dict())) == chosen
    assert HeatMapSettings.from_spec(_spec()) == HeatMapSettings()  # no section: Grad-CAM at cam_layer
    # spec format 1.0 kept the section in the training summary
    old = _spec(training={"explain": {"method": "HiResCAM"}})
    assert HeatMapSettings.from_spec(old) == HeatMapSettings(method="hirescam")
    assert [f.name for f in dataclasses.fields(HeatMapSettings)] == ["method", "layer", "aug_smooth"]


def test_training_config_section_is_the_same_schema() -> None:
    from fetalplanes.training.config import TrainConfig, load_config

    assert TrainConfig.model_fields["explain"].annotation is HeatMapSettings
    cfg = load_config("demo", {"explain.method": "GradientSHAP"})
    assert cfg.explain == HeatMapSettings(method="gradientshap", layer=cfg.explain.layer,
                                          aug_smooth=cfg.explain.aug_smooth)
    with pytest.raises(UsageError, match=r"explain\.foo: unknown field; valid fields are \['method', 'layer', 'aug_smooth'\]"):
        load_config("demo", {"explain.foo": 1})
    with pytest.raises(UsageError, match=r"explain\.aug_smooth: .*boolean.*'maybe'"):
        load_config("demo", {"explain.aug_smooth": "maybe"})


def test_an_attribution_stores_the_input_as_its_layer_and_refuses_cam_options() -> None:
    """An input attribution has no feature map: the stored section says 'input', and a config
    that sets a CAM layer or augmentation smoothing beside it is refused, naming the field."""
    from fetalplanes.training.config import load_config

    assert HeatMapSettings(method="GradientSHAP").layer == "input"
    assert HeatMapSettings(method="occlusion", layer="input").to_dict() == {
        "method": "occlusion", "layer": "input", "aug_smooth": False}
    assert HeatMapSettings(method="gradcam").layer == "cam_layer"  # CAMs keep their default
    # A CAM asked of a model whose default is an attribution explains its declared CAM layer.
    assert HeatMapSettings(method="gradientshap").cam_layer == "cam_layer"
    assert HeatMapSettings(method="layercam", layer="stage:-3").cam_layer == "stage:-3"
    with pytest.raises(UsageError, match=r"layer 'stage:-2' applies to CAM methods only; 'gradientshap'"):
        HeatMapSettings(method="gradientshap", layer="stage:-2")
    with pytest.raises(UsageError, match=r"aug_smooth applies to CAM methods only"):
        HeatMapSettings(method="integratedgradients", aug_smooth=True)
    with pytest.raises(UsageError, match=r"invalid config .*explain: layer .stage:-3. applies to CAM methods only"):
        load_config("demo", {"explain.method": "gradientshap", "explain.layer": "stage:-3"})


def test_a_model_file_from_before_the_refusal_loads_as_its_attribution() -> None:
    """Files trained with ``--set explain.method=gradientshap`` on a config whose layer was
    ``stage:-2`` stored both; the layer was ignored then, and the file must still load (explain,
    the service's heat maps and the node's overlay read it)."""
    old = _spec(explain={"method": "GradientSHAP", "layer": "stage:-2", "aug_smooth": True})
    assert HeatMapSettings.from_spec(old) == HeatMapSettings(method="gradientshap")
    assert HeatMapSettings.from_spec(old).to_dict() == {"method": "gradientshap", "layer": "input",
                                                        "aug_smooth": False}
