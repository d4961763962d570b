"""CBAM's spatial gate: padding that invents no border, logits BatchNorm-ed so the gate cannot
saturate, both recorded in the spec; old models keep theirs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fetalplanes.core.spec import SPEC_FORMAT_VERSION, ModelSpec
from fetalplanes.models.attention import CBAM, SPATIAL_NORMS, SPATIAL_PADDINGS, create_attention
from fetalplanes.models.checkpoint import load_model, write_checkpoint
from fetalplanes.models.registry import create_model, resolve_config


def _pair(channels: int = 16) -> tuple[CBAM, CBAM]:
    torch.manual_seed(0)
    new = CBAM(channels, spatial_padding="replicate", spatial_norm="none").eval()
    old = CBAM(channels, spatial_padding="zeros", spatial_norm="none").eval()
    old.load_state_dict(new.state_dict())  # the padding is no parameter: same weights
    return new, old


def test_a_uniform_map_gives_a_uniform_gate_only_without_zero_padding() -> None:
    """The artefact: zero padding tells each cell of a 4x4 map where it is, whatever the image."""
    new, old = _pair()
    x = torch.ones(1, 16, 4, 4) * torch.rand(1, 16, 1, 1)  # no spatial structure at all
    with torch.no_grad():
        g_new, g_old = new.spatial_gate(new.channel_refined(x)), old.spatial_gate(old.channel_refined(x))
    assert float(g_new.std()) < 1e-6  # nothing in the input, nothing in the gate
    assert float(g_old.std()) > 1e-3  # a position-only pattern
    assert not torch.allclose(g_old[0, 0, 0, 0], g_old[0, 0, 1, 1])  # border != centre


def test_gate_follows_the_input_on_small_maps() -> None:
    """Across inputs with structure, the share of gate variance that is position-only is lower."""
    new, old = _pair()
    x = torch.randn(64, 16, 4, 4).abs()
    with torch.no_grad():
        gates = {n: m.spatial_gate(m.channel_refined(x))[:, 0] for n, m in (("new", new), ("old", old))}
    # Position-only share: variance of the mean gate map over cells / total variance.
    share = {n: float(g.mean(0).var() / g.var()) for n, g in gates.items()}
    assert share["new"] < share["old"]


def test_gate_logits_are_normalised_so_large_activations_do_not_saturate_it() -> None:
    """Fine-tuned features are large: without a norm the sigmoid sits at ~1 on every cell."""
    torch.manual_seed(0)
    x = 50.0 * torch.randn(32, 16, 4, 4).abs()  # activations far from unit scale
    gates = {}
    for norm in SPATIAL_NORMS:
        block = CBAM(16, spatial_norm=norm).train()  # training mode: BatchNorm uses the batch statistics
        torch.manual_seed(1)
        block.spatial.weight.data = torch.randn_like(block.spatial.weight)
        with torch.no_grad():
            gates[norm] = block.spatial_gate(block.channel_refined(x))
    saturated = {n: float(((g < 0.01) | (g > 0.99)).float().mean()) for n, g in gates.items()}
    assert saturated["none"] > 0.8, saturated
    assert saturated["batch"] < 0.2, saturated
    assert float(gates["batch"].std()) > 5 * float(gates["none"].std())


def test_gate_options_are_validated_and_the_defaults_are_the_new_ones() -> None:
    block = CBAM(16)
    assert block.spatial_padding == "replicate" and "zeros" in SPATIAL_PADDINGS
    assert block.spatial_norm_kind == "batch" and isinstance(block.spatial_norm, torch.nn.BatchNorm2d)
    assert block.spatial.bias is None  # BatchNorm's shift replaces it
    assert isinstance(CBAM(16, spatial_norm="none").spatial_norm, torch.nn.Identity)
    with pytest.raises(ValueError, match="choose one of"):
        CBAM(16, spatial_padding="circularish")
    with pytest.raises(ValueError, match=r"choose one of \['batch', 'none'\]"):
        CBAM(16, spatial_norm="layer")
    with pytest.raises(ValueError, match="does not take attention_kwargs"):
        create_attention("se", 16, spatial_padding="zeros")
    # New configs record the new defaults (in the spec, through model_dump); other blocks get nothing.
    assert resolve_config("demo").attention_kwargs == {"spatial_padding": "replicate", "spatial_norm": "batch"}
    assert resolve_config("paper_lite0", attention_kwargs={"spatial_padding": "zeros"}).attention_kwargs == {
        "spatial_padding": "zeros", "spatial_norm": "batch"}
    assert resolve_config("demo", attention="se").attention_kwargs == {}


def _spec(model, version: str, kwargs: dict) -> ModelSpec:
    arch = {**model.config, "attention_kwargs": kwargs}
    return ModelSpec.from_dict({"name": "t", "task": "planes", "class_names": list("abc"), "architecture": arch,
                                "format_version": version})


@pytest.mark.parametrize(("version", "kwargs", "padding", "norm"), [
    ("1.1", {}, "zeros", "none"),  # written before either choice existed
    ("1.0", {"reduction": 16}, "zeros", "none"),
    ("1.2", {"spatial_padding": "replicate"}, "replicate", "none"),  # padding chosen, no norm yet
    (SPEC_FORMAT_VERSION, {}, "replicate", "batch"),  # a hand-made new spec without the keys: the defaults
    (SPEC_FORMAT_VERSION, {"spatial_padding": "zeros", "spatial_norm": "none"}, "zeros", "none"),
])
def test_checkpoints_rebuild_with_the_gate_they_were_trained_with(tmp_path: Path, version: str, kwargs: dict,
                                                                  padding: str, norm: str) -> None:
    # The weights come from a model built with the old options: a strict state-dict load only
    # succeeds if the spec's migration rebuilds exactly that module (with or without the BatchNorm).
    model = create_model("demo", 3, pretrained=False, attention_kwargs={"spatial_padding": padding,
                                                                       "spatial_norm": norm}).eval()
    spec = _spec(model, version, kwargs)
    assert spec.format_version == SPEC_FORMAT_VERSION
    path = write_checkpoint(tmp_path / "m.ckpt", model, spec, {})
    loaded, loaded_spec = load_model(path)
    assert (loaded.attention.spatial_padding, loaded.attention.spatial_norm_kind) == (padding, norm)
    recorded = loaded_spec.architecture["attention_kwargs"]
    assert recorded.get("spatial_padding", "replicate") == padding
    assert recorded.get("spatial_norm", "batch") == norm
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_migration_leaves_other_attentions_alone() -> None:
    model = create_model("demo", 3, pretrained=False, attention="se")
    assert _spec(model, "1.1", {}).architecture["attention_kwargs"] == {}


def test_gate_norm_trains_on_a_batch_of_one_1x1_map() -> None:
    """A frozen backbone at a small image size gives 1x1 maps; a last training batch of one image
    then has a single gate logit, which has no batch statistics. The block must still train."""
    block = CBAM(16).train()
    x = torch.rand(1, 16, 1, 1, requires_grad=True)
    before = (block.spatial_norm.running_mean.clone(), block.spatial_norm.running_var.clone())
    y = block(x)  # torch's BatchNorm raises "Expected more than 1 value per channel when training"
    y.sum().backward()
    assert block.spatial.weight.grad is not None  # the gate still learns through the norm's affine
    # Normalised with the running statistics, as at inference, which it leaves untouched.
    norm = block.spatial_norm
    assert torch.equal(norm.running_mean, before[0]) and torch.equal(norm.running_var, before[1])
    with torch.no_grad():
        assert torch.allclose(y, block.eval()(x))
    # Any other batch uses (and updates) the batch statistics as usual.
    block.train()(torch.rand(2, 16, 1, 1))
    assert not torch.equal(block.spatial_norm.running_mean, before[0])


def test_frozen_model_trains_on_one_small_image() -> None:
    model = create_model("demo", 3, pretrained=False, finetune="frozen").train()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3)  # 32 px: Lite0's last map is 1x1


@pytest.mark.parametrize(("overrides", "match"), [
    ({"model.attention_kwargs.spatial_norm": "layer"},
     r"^invalid config \(.*demo.yaml\): model.attention_kwargs: unknown cbam spatial_norm 'layer'; "
     r"choose one of \['batch', 'none'\]$"),
    ({"model.attention_kwargs.spatial_padding": "circular"},
     r"spatial_padding 'circular'; choose one of \['replicate'"),
    ({"model.attention_kwargs.spatial_nrom": "batch"},  # a typo in the key: the valid keys listed
     r"attention 'cbam' does not take attention_kwargs \['spatial_nrom'\]; it takes \['reduction', 'kernel_size', "
     r"'spatial_padding', 'spatial_norm'\]"),
    ({"model.attention": "se", "model.attention_kwargs.spatial_norm": "none"},
     r"attention 'se' does not take attention_kwargs \['spatial_norm'\]; it takes \['reduction'\]"),
])
def test_bad_attention_options_fail_when_the_config_is_read(overrides: dict, match: str) -> None:
    """Not later, when the model is built (after the data was read; mid-grid in ``reproduce``)."""
    from fetalplanes.core.errors import UsageError
    from fetalplanes.training.config import load_config

    with pytest.raises(UsageError, match=match):
        load_config("demo", overrides)


def test_a_checkpoint_with_bad_attention_options_is_a_one_line_error(tmp_path: Path) -> None:
    from fetalplanes.core.errors import UserError

    model = create_model("demo", 3, pretrained=False)
    spec = _spec(model, SPEC_FORMAT_VERSION, {"spatial_norm": "group"})
    path = write_checkpoint(tmp_path / "m.ckpt", model, spec, {})
    with pytest.raises(UserError, match=r"m\.ckpt: the spec's architecture\): attention_kwargs: unknown cbam "
                                         r"spatial_norm 'group'; choose one of \['batch', 'none'\]"):
        load_model(path)
