"""Variant rows: groups, selection errors, YAML rows, and that every row is a valid config."""

from __future__ import annotations

from pathlib import Path

import pytest

from fetalplanes.reproduce.variants import BASE_CONFIG, default_variants, groups, load_variants, select_variants
from fetalplanes.training.config import load_config


def test_every_row_builds_a_valid_config() -> None:
    for v in default_variants().values():
        cfg = load_config(BASE_CONFIG, v.overrides)
        assert cfg.model.backbone == v.overrides["model.backbone"]
        assert (cfg.model.finetune == "frozen") == v.frozen


def test_groups_cover_the_issue_grid() -> None:
    g = groups(default_variants())
    assert {"paper", "ablations", "baselines", "all"} <= set(g)
    paper = select_variants("paper")
    assert {(v.overrides["model.backbone"], v.overrides["model.attention"]) for v in paper} == {
        (b, a) for b in ("efficientnet_b0", "tf_efficientnetv2_b0") for a in ("cbam", "se", "mhsa")}
    abl = {v.name: v.overrides for v in select_variants("ablations")}
    assert abl["b0_noattn"]["model.attention"] == "none"
    assert abl["b0_linear"]["model.head_hidden"] == []
    assert abl["b0_frozen"]["model.finetune"] == "frozen"
    assert {v.overrides["model.backbone"] for v in select_variants("baselines")} == {"densenet169", "mobilenetv3_large_100"}
    assert len(select_variants("all")) == len(default_variants())


def test_selection_is_ordered_unique_and_errors_list_options() -> None:
    names = [v.name for v in select_variants("b0_se,paper,b0_se")]
    assert names[0] == "b0_se" and len(names) == len(set(names)) == 6
    with pytest.raises(ValueError, match="unknown variant or group 'nope'.*baselines"):
        select_variants("nope")


def test_yaml_rows_add_and_override(tmp_path: Path) -> None:
    f = tmp_path / "v.yaml"
    f.write_text("b0_cbam:\n  overrides: {model.dropout: 0.5}\nmine:\n  group: extra\n"
                 "  overrides: {model.backbone: resnet18, model.attention: se}\n")
    rows = load_variants(f)
    assert rows["b0_cbam"].overrides["model.dropout"] == 0.5
    assert rows["b0_cbam"].overrides["model.attention"] == "cbam"  # built-in keys kept
    assert [v.name for v in select_variants("extra", rows)] == ["mine"]
    f.write_text("bad: [1, 2]\n")
    with pytest.raises(ValueError, match="'bad'"):
        load_variants(f)


def test_costs_scale_with_input_size_and_freezing() -> None:
    import torch

    from fetalplanes.models.registry import build_model
    from fetalplanes.reproduce.runner import measure_costs

    cfg = load_config(BASE_CONFIG, default_variants()["lite0_frozen"].overrides)
    small = measure_costs(cfg.model, 6, 64, runs=1)
    large = measure_costs(cfg.model, 6, 128, runs=1)
    assert large["gflops"] == pytest.approx(4 * small["gflops"], rel=0.1)  # conv FLOPs grow with pixels
    counts = build_model(cfg.model.model_copy(update={"pretrained": "none"}), 6).param_counts()
    assert (small["params_total"], small["params_trainable"]) == (counts["total"], counts["trainable"])
    assert small["params_trainable"] < small["params_total"] and small["threads"] == 1
    assert small["cpu_latency_ms"] > 0 and torch.get_num_threads() >= 1
