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


def _edit_state(state: dict[str, torch.Tensor], edit: str) -> dict[str, torch.Tensor]:
    if edit == "float64":
        return {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    if edit == "float16":
        return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    if edit == "channels_last":
        return {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in state.items()}
    if edit == "view of a larger storage":
        out = dict(state)
        for k in [k for k, v in state.items() if v.dim() == 4][:3]:
            big = torch.zeros(state[k].numel() * 50)
            big[7:7 + state[k].numel()] = state[k].flatten()
            out[k] = big[7:7 + state[k].numel()].view(state[k].shape)
        return out
    return state


@pytest.mark.parametrize("edit", ["as saved", "float64", "float16", "channels_last", "view of a larger storage"])
def test_loaded_model_equals_one_built_for_real_with_the_weights_copied_in(tiny_checkpoint: Path, edit: str):
    """The meta build + assign path gives the model the old build + copy_ path gave, bit for bit:
    float32, row-major weights owning their memory, the same logits."""
    from fetalplanes.models.checkpoint import STATE_PREFIX, model_from_checkpoint, spec_of
    from fetalplanes.models.registry import ModelConfig, build_model

    ckpt = read_checkpoint(tiny_checkpoint)
    ckpt["state_dict"] = _edit_state(ckpt["state_dict"], edit)
    spec = spec_of(ckpt)
    model = model_from_checkpoint(ckpt, spec)
    reference = build_model(ModelConfig(**{**spec.architecture, "pretrained": "none"}), spec.num_classes)
    reference.load_state_dict({k.removeprefix(STATE_PREFIX): v for k, v in ckpt["state_dict"].items()
                               if k.startswith(STATE_PREFIX)})
    reference.eval()
    for name, p in model.state_dict().items():
        ref = reference.state_dict()[name]
        assert p.dtype == ref.dtype and p.stride() == ref.stride(), name
        assert p.untyped_storage().nbytes() == p.numel() * p.element_size(), name
    x = torch.rand(2, 3, spec.preprocessing.image_size, spec.preprocessing.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_a_weight_of_another_kind_is_refused_by_name(tiny_checkpoint: Path, tmp_path: Path, dtype: torch.dtype):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["state_dict"]["model.head.0.weight"] = ckpt["state_dict"]["model.head.0.weight"].to(dtype)
    path = tmp_path / "int.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"'model\.head\.0\.weight' is (int64|bool), expected float32") as err:
        load_model(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
