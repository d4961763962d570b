"""models.checkpoint: the one reader/writer of torch checkpoints (spec stored once, versioned)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fetalplanes.models.checkpoint import (
    CHECKPOINT_FORMAT,
    CKPT_KEY,
    CheckpointError,
    load_model,
    read_checkpoint,
    update_spec,
    write_checkpoint,
)


def test_lightning_checkpoint_stores_the_spec_once(tiny_checkpoint: Path):
    ckpt = read_checkpoint(tiny_checkpoint)
    assert ckpt[CKPT_KEY]["format"] == CHECKPOINT_FORMAT
    assert "spec" in ckpt[CKPT_KEY]
    hp = ckpt.get("hyper_parameters") or {}
    assert "spec" not in hp and "config" not in hp


def test_write_checkpoint_round_trips_weights_and_spec(tiny_checkpoint: Path, tmp_path: Path):
    model, spec = load_model(tiny_checkpoint)
    out = write_checkpoint(tmp_path / "copy.ckpt", model, spec, {"name": "x"}, epoch=3)
    model2, spec2 = load_model(out)
    assert spec2 == spec
    assert read_checkpoint(out)["epoch"] == 3
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), k


def test_update_spec_drops_the_legacy_second_copy(tiny_checkpoint: Path, tmp_path: Path):
    legacy = tmp_path / "legacy.ckpt"
    ckpt = read_checkpoint(tiny_checkpoint)
    ckpt["hyper_parameters"] = {"spec": ckpt[CKPT_KEY]["spec"], "class_weights": None}
    torch.save(ckpt, legacy)
    spec = update_spec(legacy, temperature=2.0)
    again = read_checkpoint(legacy)
    assert spec.temperature == 2.0 == again[CKPT_KEY]["spec"]["temperature"]
    assert "spec" not in again["hyper_parameters"]


def test_foreign_file_names_the_accepted_formats(tmp_path: Path):
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(b"\x08\x07not a pickle")
    with pytest.raises(CheckpointError, match=r"model.ckpt.*\.ckpt.*\.onnx"):
        load_model(bad)
