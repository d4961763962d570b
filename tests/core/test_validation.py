"""pydantic and YAML errors become one-line UsageErrors naming the field, what was given and the
valid options; an invalid stored spec value is a SpecError naming its source."""

from __future__ import annotations

from typing import Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from fetalplanes.core.errors import UsageError, UserError
from fetalplanes.core.spec import ModelSpec, SpecError
from fetalplanes.core.validation import config_error, yaml_problem


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: Literal["planes", "brain"] = "planes"
    lr: float = 1.0

    @field_validator("lr")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"must be > 0, got {v}")
        return v


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: Inner = Inner()
    name: str = "x"


def _error(raw: dict) -> UsageError:
    with pytest.raises(ValidationError) as info:
        Outer(**raw)
    return config_error(info.value, Outer, "run.yaml")


def test_every_problem_on_one_line_with_field_paths_and_options() -> None:
    err = _error({"data": {"task": "hand", "lr": -1, "typo": 1}, "extra": 2})
    text = str(err)
    assert isinstance(err, UsageError) and isinstance(err, ValueError) and isinstance(err, UserError)
    assert "\n" not in text and text.startswith("invalid config (run.yaml): ")
    assert "data.task: Input should be 'planes' or 'brain', got 'hand'" in text
    assert "data.lr: must be > 0, got -1.0" in text and "Value error" not in text
    assert "data.typo: unknown field; valid fields are ['task', 'lr']" in text
    assert "extra: unknown field; valid fields are ['data', 'name']" in text
    assert "errors.pydantic.dev" not in text


def test_a_section_of_the_wrong_type_names_it_and_the_value() -> None:
    text = str(_error({"data": 3}))
    assert text.startswith("invalid config (run.yaml): data: ") and "got 3" in text


def test_long_values_are_shortened() -> None:
    text = str(_error({"data": {"task": "x" * 500}}))
    assert len(text) < 200 and "..." in text


def test_yaml_problem_is_one_line_with_the_position() -> None:
    with pytest.raises(yaml.YAMLError) as info:
        yaml.safe_load("a: 1\nb: [unclosed\n")
    text = yaml_problem(info.value)
    assert "\n" not in text and "line 3" in text and "column" in text


def test_training_config_errors_list_the_valid_options(tmp_path) -> None:
    from fetalplanes.training.config import load_config

    with pytest.raises(UsageError, match=r"data\.split: Input should be 'official', 'patient-kfold' or 'image-8020'"):
        load_config("demo", {"data.split": "bogus"})
    with pytest.raises(UsageError, match=r"optim\.typo: unknown field; valid fields are \[.*'lr'"):
        load_config("demo", {"optim.typo": 1})
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: 1\n")
    with pytest.raises(UsageError, match=r"bad\.yaml: not valid YAML \(.*line \d+, column \d+\)"):
        load_config(bad)


@pytest.mark.parametrize(("preprocessing", "match"), [
    ({"image_size": 8}, "image_size must be >= 16"),
    ({"mean": [0.5, 0.5]}, "3 values"),
    ({"resize": "crop"}, "choose one of"),
])
def test_invalid_stored_preprocessing_is_a_spec_error_naming_the_source(preprocessing: dict, match: str) -> None:
    record = {"name": "m", "task": "planes", "class_names": ["a", "b"], "architecture": {},
              "preprocessing": preprocessing}
    with pytest.raises(SpecError, match=match) as info:
        ModelSpec.from_dict(record, "model.onnx")
    assert str(info.value).startswith("model.onnx: ")
