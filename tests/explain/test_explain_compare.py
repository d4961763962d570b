"""``fetalplanes explain --compare``: all methods on the same images, one table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fetalplanes.explain.compare import DEFAULT_CONFIGS, markdown, parse_configs


def test_configs_are_parsed_and_bad_ones_named() -> None:
    assert parse_configs("stage:-3:layercam; gradientshap ;") == [("layercam", "stage:-3"), ("gradientshap", None)]
    assert len(parse_configs(DEFAULT_CONFIGS)) == 6
    with pytest.raises(ValueError, match="takes no layer"):
        parse_configs("stage:-3:occlusion")
    with pytest.raises(ValueError, match="LAYER:METHOD"):
        parse_configs("gradcam")
    with pytest.raises(ValueError, match="choose one of"):
        parse_configs("cam_layer:shap")
    with pytest.raises(ValueError, match="no compare configs"):
        parse_configs(" ; ")


def test_markdown_row_reads_n_a_without_masks() -> None:
    table = {"n_images": 2, "split": None, "model": "m", "train_seed": 0, "shipped_default": "gradcam",
             "survival_threshold": 0.5,
             "rows": [{"label": "gradcam @ cam_layer", "seconds_per_image": 0.05}]}
    text = markdown(table)
    assert "| gradcam @ cam_layer | n/a |" in text and "0.050 |" in text


@pytest.mark.slow
def test_compare_writes_one_table_of_all_methods(tiny_checkpoint: Path, synth_data: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fetalplanes.cli import app
    from fetalplanes.cli.explain import register

    if "explain" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        register(app)
    out = tmp_path / "cmp"
    res = CliRunner().invoke(app, ["explain", "--compare", "--checkpoint", str(tiny_checkpoint), "--data", str(synth_data),
                                   "--split", "val", "--limit", "3", "--out", str(out), "--no-progress",
                                   "--configs", "stage:-3:layercam;integratedgradients"])
    assert res.exit_code == 0, res.output
    table = json.loads((out / "compare.json").read_text())
    assert table["split"] == "val" and table["train_seed"] == 0 and table["survival_threshold"] == 0.5
    assert [r["label"] for r in table["rows"]] == ["layercam @ stage:-3", "integratedgradients"]
    for r in table["rows"]:
        assert r["n_images"] == 3 and r["n_with_mask"] == 3
        assert 0.0 <= r["energy_share"]["model"]["mean"] <= 1.0 and "beats_centre" in r["pointing_game"]
        sanity = r["sanity"]
        assert sanity["margin"] == pytest.approx(0.5 - sanity["max_median"])
        assert r["seconds_per_image"] > 0
        assert (out / r["folder"] / "index.html").is_file() and (out / r["folder"] / "sanity.json").is_file()
    assert table["rows"][1]["layer"] == "input"
    md = (out / "compare.md").read_text()
    assert "| integratedgradients |" in md and "margin to threshold" in md
    assert 'href="integratedgradients/index.html"' in (out / "compare.html").read_text()
    # --configs without --compare is refused
    bad = CliRunner().invoke(app, ["explain", "--checkpoint", str(tiny_checkpoint), "--data", str(synth_data),
                                   "--out", str(tmp_path / "x"), "--configs", "gradientshap", "--no-progress"])
    assert bad.exit_code != 0 and "--compare" in bad.output
