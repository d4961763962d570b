"""MODEL_CARD.md: HF front matter, metrics with intervals, per-class/machine tables, warnings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from fetalplanes.evaluation.model_card import render_card, write_model_card


@pytest.fixture(scope="module")
def evaluated(tiny_checkpoint: Path, synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from fetalplanes.evaluation.report import evaluate

    run = tmp_path_factory.mktemp("card")
    ckpt = run / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(tiny_checkpoint, ckpt)
    return ckpt, evaluate(ckpt, synth_data, run / "eval", n_boot=50)


def _front(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_written_next_to_checkpoint(evaluated: tuple[Path, dict]) -> None:
    ckpt, metrics = evaluated
    path = write_model_card(ckpt, ckpt.parent.parent / "eval" / "metrics.json",
                            costs={"params_total": 10, "params_trainable": 5, "gflops": 0.1, "image_size": 64,
                                   "cpu_latency_ms": 3.0, "threads": 2})
    assert path == ckpt.parent / "MODEL_CARD.md"
    text = path.read_text()
    meta = _front(text)
    assert {"license", "tags", "datasets", "metrics", "model-index"} <= set(meta)
    values = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values["Top-1 accuracy"] == pytest.approx(metrics["top1"], abs=1e-4)
    assert values["Macro F1"] == pytest.approx(metrics["f1_macro"], abs=1e-4)
    assert "Not a medical device" in text
    assert "SYNTHETIC" in text and "synthetic-data" in meta["tags"]  # the fixture data are phantoms
    ci = metrics["ci95"]
    if ci["top1"]:
        assert f"{ci['top1']['low']:.4f}" in text
    else:  # the fixture's test split has fewer than 10 patients: the card says why there is no interval
        assert f"only {ci['n_units']} patient(s)" in text
    for name in metrics["per_class"]:
        assert f"| {name} |" in text
    assert "By US_Machine" in text


def test_leaky_split_is_flagged(evaluated: tuple[Path, dict]) -> None:
    from fetalplanes.models.checkpoint import load_model

    ckpt, metrics = evaluated
    _, spec = load_model(ckpt)
    training = {**spec.training, "splits": {**spec.training["splits"], "scheme": "image-8020", "leaky": True}}
    text = render_card(spec.replace(training=training), metrics)
    assert "LEAKY split (image-8020)" in text
    assert "LEAKY" not in render_card(spec, metrics)


def test_card_rejects_metrics_without_fields(evaluated: tuple[Path, dict], tmp_path: Path) -> None:
    ckpt, _ = evaluated
    with pytest.raises(ValueError, match="top2"):
        write_model_card(ckpt, {"top1": 0.5}, out=tmp_path / "card.md")


def test_card_names_the_attention_options(evaluated: tuple[Path, dict]) -> None:
    """Two CBAM models with different spatial gates (the 1.3 BatchNorm or not) must not read alike."""
    from fetalplanes.models.checkpoint import load_model

    ckpt, metrics = evaluated
    _, spec = load_model(ckpt)
    assert "`cbam` attention (spatial_padding `replicate`, spatial_norm `batch`)" in render_card(spec, metrics)
    old = spec.replace(architecture={**spec.architecture, "attention_kwargs": {"spatial_padding": "zeros",
                                                                               "spatial_norm": "none"}})
    assert "(spatial_padding `zeros`, spatial_norm `none`)" in render_card(old, metrics)
    plain = spec.replace(architecture={**spec.architecture, "attention": "se", "attention_kwargs": {}})
    assert "`se` attention -> global average" in render_card(plain, metrics)


def test_card_says_an_unseen_test_split_is_one(evaluated: tuple[Path, dict], tmp_path: Path) -> None:
    ckpt, metrics = evaluated
    assert metrics["selection"]["split"] == "test" and metrics["selection"]["seen_in_training_or_validation"] == 0
    text = write_model_card(ckpt, metrics, out=tmp_path / "card.md").read_text()
    assert "## Evaluation (test split, none of its images seen in training or validation)" in text
    assert _front(text)["model-index"][0]["results"][0]["dataset"]["split"].endswith("/test")


def test_card_labels_metrics_of_images_the_model_saw(evaluated: tuple[Path, dict], tmp_path: Path) -> None:
    from fetalplanes.evaluation.report import evaluate

    ckpt, _ = evaluated
    data = Path(evaluated[1]["data"])
    seen = evaluate(ckpt, data, tmp_path / "all", split="all", n_boot=20, unit="image")
    k = seen["selection"]["seen_in_training_or_validation"]
    assert k > 0
    text = write_model_card(ckpt, tmp_path / "all" / "metrics.json", out=tmp_path / "card.md").read_text()
    assert f"split `all`: {k} of {seen['selection']['n_scored']} images seen in training or validation" in text
    assert "NOT a held-out test result" in text and "Evaluation (test split" not in text
    assert _front(text)["model-index"][0]["results"][0]["dataset"]["split"].endswith("/all")


def test_card_refuses_metrics_of_another_model_file(evaluated: tuple[Path, dict], tmp_path: Path) -> None:
    ckpt, metrics = evaluated
    other = dict(metrics, model_sha256="0" * 64)
    with pytest.raises(ValueError, match="another model file"):
        write_model_card(ckpt, other, out=tmp_path / "card.md")


def test_card_names_the_metrics_file_when_a_field_is_missing(evaluated: tuple[Path, dict], tmp_path: Path) -> None:
    import json

    ckpt, metrics = evaluated
    bad = tmp_path / "metrics.json"
    bad.write_text(json.dumps({k: v for k, v in metrics.items() if k != "per_class"}))
    with pytest.raises(ValueError, match=r"metrics\.json: field\(s\) \['per_class'\] missing"):
        write_model_card(ckpt, bad, out=tmp_path / "card.md")
