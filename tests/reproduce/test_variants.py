"""Variant rows: a preset plus overrides; groups, selection errors, YAML rows, and that every
row resolves to the same config as before the rows moved into configs/variants/paper_table.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from fetalplanes.models.presets import list_presets, variants_table
from fetalplanes.reproduce.variants import BASE_CONFIG, default_variants, groups, load_variants, select_variants
from fetalplanes.training.config import load_config

# What each built-in row resolved to when the rows were Python dicts on top of paper_b0
# (backbone, attention, head widths, dropout, finetune, weights source, lr, epochs, image size).
_B0, _V2, _L0 = "efficientnet_b0", "tf_efficientnetv2_b0", "tf_efficientnet_lite0"
_MLP = [512, 256]
BEFORE = {
    "b0_cbam": (_B0, "cbam", _MLP, 0.3, "full", "timm"),
    "b0_se": (_B0, "se", _MLP, 0.3, "full", "timm"),
    "b0_mhsa": (_B0, "mhsa", _MLP, 0.3, "full", "timm"),
    "v2b0_cbam": (_V2, "cbam", _MLP, 0.3, "full", "timm"),
    "v2b0_se": (_V2, "se", _MLP, 0.3, "full", "timm"),
    "v2b0_mhsa": (_V2, "mhsa", _MLP, 0.3, "full", "timm"),
    "b0_noattn": (_B0, "none", _MLP, 0.3, "full", "timm"),
    "b0_linear": (_B0, "cbam", [], 0.2, "full", "timm"),
    "b0_frozen": (_B0, "cbam", _MLP, 0.3, "frozen", "timm"),
    "lite0_cbam": (_L0, "cbam", _MLP, 0.3, "full", "lite0-pypi"),
    "lite0_frozen": (_L0, "cbam", _MLP, 0.3, "frozen", "lite0-pypi"),
    "densenet169": ("densenet169", "none", [], 0.2, "full", "timm"),
    "mobilenetv3": ("mobilenetv3_large_100", "none", [], 0.2, "full", "timm"),
}


def test_rows_resolve_as_before() -> None:
    rows = default_variants()
    assert list(rows) == list(BEFORE)  # table order too
    for name, v in rows.items():
        cfg = load_config(v.base, v.overrides)  # what reproduce.runner.run_config does
        m = cfg.model
        assert (m.backbone, m.attention, m.head_hidden, m.dropout, m.finetune, m.pretrained) == BEFORE[name], name
        assert (cfg.optim.lr, cfg.optim.max_epochs, cfg.optim.batch_size, cfg.data.image_size) == (1e-3, 30, 32, 224)
        assert (cfg.trainer.seed, cfg.trainer.patience, cfg.optim.backbone_lr_mult) == (42, 8, 0.2)
        assert (m.finetune == "frozen") == v.frozen
        # the same config when the grid's non-model sections come from `reproduce --config paper_b0`
        assert load_config(BASE_CONFIG, v.overrides).model == m


def test_every_row_is_a_preset_plus_overrides() -> None:
    rows = default_variants()
    assert all(v.base in list_presets() for v in rows.values())
    assert (rows["b0_se"].base, rows["b0_se"].changes) == ("paper_b0", {"model.attention": "se"})
    assert (rows["densenet169"].base, rows["densenet169"].changes) == ("densenet169", {})
    assert (rows["lite0_frozen"].base, rows["lite0_frozen"].changes) == ("paper_lite0", {"model.finetune": "frozen"})
    assert variants_table().is_file()


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
                 "  overrides: {model.backbone: resnet18, model.attention: se}\n"
                 "lite_se:\n  base: demo\n  overrides: {model.attention: se}\n")
    rows = load_variants(f)
    assert rows["b0_cbam"].overrides["model.dropout"] == 0.5
    assert rows["b0_cbam"].overrides["model.attention"] == "cbam"  # built-in keys kept
    assert rows["mine"].base == BASE_CONFIG  # a new row without base starts from paper_b0
    assert [v.name for v in select_variants("extra", rows)] == ["mine"]
    cfg = load_config(rows["lite_se"].base, rows["lite_se"].overrides)
    assert (cfg.model.backbone, cfg.model.attention, cfg.data.image_size) == ("tf_efficientnet_lite0", "se", 128)
    f.write_text("bad: [1, 2]\n")
    with pytest.raises(ValueError, match="'bad'"):
        load_variants(f)


@pytest.mark.parametrize("text,match", [
    ("x:\n  base: nosuch\n", r"v.yaml: variant 'x': base 'nosuch' is neither a preset \(.*densenet169"),
    ("x:\n  bogus: 1\n", r"unknown keys \['bogus'\]; valid keys are \['base'"),
    ("x:\n  overrides: {model.attention: nope}\n", "(?s)variant 'x'.*unknown attention 'nope'"),
    # Attention options are checked when the file is read, not when the grid reaches the row.
    ("x:\n  overrides: {model.attention_kwargs.spatial_norm: layer}\n",
     r"(?s)variant 'x'.*spatial_norm 'layer'; choose one of \['batch', 'none'\]"),
    ("x:\n  overrides: {model.attention: se, model.attention_kwargs: {spatial_norm: none}}\n",
     r"(?s)variant 'x'.*'se' does not take attention_kwargs \['spatial_norm'\]"),
])
def test_bad_user_rows_fail_at_load_naming_file_and_row(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "v.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_variants(f)


def test_user_row_base_may_be_a_yaml_next_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("model: {backbone: resnet18, attention: none, head_hidden: []}\n"
                                         "optim: {lr: 0.01}\n")
    f = tmp_path / "v.yaml"
    f.write_text("r18:\n  base: mine.yaml\n  overrides: {model.dropout: 0.1}\n")
    v = load_variants(f)["r18"]
    cfg = load_config(v.base, v.overrides)
    assert (cfg.model.backbone, cfg.model.dropout, cfg.optim.lr) == ("resnet18", 0.1, 0.01)


def test_costs_scale_with_input_size_and_freezing() -> None:
    import torch

    from fetalplanes.models.registry import build_model
    from fetalplanes.reproduce.runner import measure_costs

    v = default_variants()["lite0_frozen"]
    cfg = load_config(v.base, v.overrides)
    small = measure_costs(cfg.model, 6, 64, runs=1)
    large = measure_costs(cfg.model, 6, 128, runs=1)
    assert large["gflops"] == pytest.approx(4 * small["gflops"], rel=0.1)  # conv FLOPs grow with pixels
    counts = build_model(cfg.model.model_copy(update={"pretrained": "none"}), 6).param_counts()
    assert (small["params_total"], small["params_trainable"]) == (counts["total"], counts["trainable"])
    assert small["params_trainable"] < small["params_total"] and small["threads"] == 1
    assert small["cpu_latency_ms"] > 0 and torch.get_num_threads() >= 1


def test_runner_builds_each_run_from_the_variants_base(tmp_path: Path) -> None:
    from fetalplanes.reproduce.runner import ReproduceSettings, RunKey, run_config

    f = tmp_path / "v.yaml"
    f.write_text("lite_se:\n  base: demo\n  overrides: {model.attention: se}\n")
    v = load_variants(f)["lite_se"]
    key = RunKey("planes", "official", v.name, 0)
    own = run_config(ReproduceSettings(tmp_path, tmp_path, [v]), v, key, "none")
    assert (own.model.backbone, own.model.attention, own.data.image_size, own.optim.lr) == (
        "tf_efficientnet_lite0", "se", 128, 2e-3)  # demo's sections
    shared = run_config(ReproduceSettings(tmp_path, tmp_path, [v], base_config="paper_b0"), v, key, "none")
    assert (shared.model.backbone, shared.model.attention, shared.data.image_size, shared.optim.lr) == (
        "tf_efficientnet_lite0", "se", 224, 1e-3)  # `--config paper_b0`: its sections, the variant's model
