"""The one preset table (configs/*.yaml): every preset resolves in create_model, in
``train --config`` and as a reproduce base, and trains one step on tiny synthetic data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fetalplanes.models import create_model
from fetalplanes.models.presets import (
    UnknownPresetError,
    list_presets,
    load_preset,
    preset_dir,
    preset_model,
    preset_path,
)
from fetalplanes.training.config import TrainConfig, load_config, resolve_config_path

PRESETS = list_presets()
# Every preset that existed anywhere before the table was merged into configs/.
REQUIRED = {"paper_b0", "paper_v2b0", "paper_lite0", "baseline_b0_linear", "baseline_lite0_linear",
            "densenet169", "mobilenetv3", "demo"}
HEAVY = {"densenet169"}  # > 10 s for one step on 2 shared CPU cores


def test_table_holds_every_preset_and_nothing_else():
    assert REQUIRED <= set(PRESETS)
    assert list_presets() == PRESETS
    assert all(preset_path(n).parent == preset_dir() for n in PRESETS)
    # sub-folders (the reproduce variant table) are not presets
    assert "paper_table" not in PRESETS and (preset_dir() / "variants" / "paper_table.yaml").is_file()


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_is_a_full_train_config(name: str):
    raw = load_preset(name)
    assert raw["name"] == name
    assert {"model", "data", "optim", "trainer"} <= set(raw)  # the same schema as every preset
    cfg = load_config(name)  # what `fetalplanes train --config NAME` does
    assert isinstance(cfg, TrainConfig) and cfg.name == name
    assert resolve_config_path(name) == preset_path(name)
    model_cfg = create_model(name, 6, pretrained=False).config  # what create_model(NAME) does
    assert model_cfg["backbone"] == cfg.model.backbone == raw["model"]["backbone"]
    assert model_cfg["head_hidden"] == cfg.model.head_hidden
    assert model_cfg["attention"] == cfg.model.attention
    assert model_cfg["pretrained"] == "none"


def test_load_preset_returns_a_copy():
    load_preset("paper_b0")["model"]["backbone"] = "changed"
    assert preset_model("paper_b0")["backbone"] == "efficientnet_b0"


def test_unknown_names_list_the_presets():
    with pytest.raises(UnknownPresetError, match="unknown preset 'nosuch'; choose one of .*densenet169"):
        load_preset("nosuch")
    with pytest.raises(FileNotFoundError, match="give a YAML path or one of the presets .*mobilenetv3"):
        load_config("nosuch")
    with pytest.raises(UnknownPresetError):
        preset_path("../configs/paper_b0")  # a path is not a preset name


def test_bare_backbone_names_still_build():
    model = create_model("resnet18", 3, attention="none", head_hidden=[])
    assert model.config["backbone"] == "resnet18"


def test_preset_reader_is_torch_free():
    code = ("import sys; from fetalplanes.models.presets import list_presets, load_preset; "
            "load_preset(list_presets()[0]); assert 'torch' not in sys.modules, 'torch imported'")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def _one_step(name: str, data: Path, out: Path) -> None:
    from fetalplanes.models.checkpoint import load_model
    from fetalplanes.training.fit import fit

    overrides = {"model.pretrained": "none", "data.image_size": 32, "data.num_workers": 0, "data.augment": 0.0,
                 "optim.batch_size": 4, "optim.max_epochs": 1, "trainer.limit_train_batches": 1,
                 "trainer.progress": False, "trainer.seed": 0, "trainer.accelerator": "cpu"}
    result = fit(data, load_config(name, overrides), out)
    last = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)
    assert last["global_step"] == 1  # exactly one optimizer step ran
    model, spec = load_model(result.best_checkpoint)
    assert spec.architecture["backbone"] == preset_model(name)["backbone"]
    assert result.summary["params"]["total"] == create_model(name, spec.num_classes).param_counts()["total"]
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, spec.num_classes)


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core box, 2 threads made one step 3-8x slower (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in PRESETS])
def test_every_preset_trains_one_step(name: str, synth_data: Path, tmp_path: Path, one_thread: None):
    _one_step(name, synth_data, tmp_path / name)


@pytest.mark.parametrize("name", ["mobilenetv3", pytest.param("densenet169", marks=pytest.mark.slow)])
def test_train_cli_takes_every_preset_name(name: str, synth_data: Path, tmp_path: Path, one_thread: None):
    """The issue's failing command, ``fetalplanes train --config densenet169``, on tiny synthetic data."""
    from typer.testing import CliRunner

    from fetalplanes.cli import app
    from fetalplanes.cli.train import register

    if "train" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        register(app)
    res = CliRunner().invoke(app, [
        "train", "--config", name, "--weights", "none", "--data", str(synth_data), "--out", str(tmp_path / "run"),
        "--image-size", "32", "--batch-size", "8", "--max-epochs", "1", "--workers", "0", "--no-progress",
        "--accelerator", "cpu"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    assert f"backbone: {preset_model(name)['backbone']}" in (tmp_path / "run" / "config.yaml").read_text()
