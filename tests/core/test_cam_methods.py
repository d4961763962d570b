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
