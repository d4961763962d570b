"""Frozen-backbone fast path: cache keys and hits, equivalence with the full model, checkpoint format.

The run goes through the same pipeline as ``fetalplanes train`` (``workflow.train_and_calibrate``
with the feature cache as its data source)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fetalplanes.training.feature_cache import cached_features

QUICK = {"data.image_size": 64, "data.num_workers": 0, "optim.max_epochs": 3, "optim.batch_size": 16,
         "trainer.progress": False, "trainer.seed": 0, "data.augment": 0.0, "model.finetune": "frozen"}


@pytest.fixture(scope="module")
def frozen_run(synth_data: Path, tmp_path_factory: pytest.TempPathFactory):
    from fetalplanes.training.config import load_config
    from fetalplanes.workflow import train_and_calibrate

    out = tmp_path_factory.mktemp("frozen")
    cfg = load_config("demo", QUICK)
    return train_and_calibrate(synth_data, cfg, out / "run", fast_path=True, cache_dir=out / "cache"), out


def test_cache_hits_and_keys(synth_data: Path, tmp_path: Path) -> None:
    from fetalplanes.core.spec import Preprocessing
    from fetalplanes.data.sources import load_source
    from fetalplanes.models import create_model

    samples = load_source(synth_data).samples[:6]
    torch.manual_seed(0)
    model = create_model("paper_lite0", 6, pretrained=False)
    pre = Preprocessing(image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    first = cached_features(model, pre, samples, tmp_path)
    again = cached_features(model, pre, samples, tmp_path)
    assert not first.cached and again.cached and again.key == first.key
    assert again.features.dtype == torch.float16 and torch.equal(again.features, first.features)
    other_pre = cached_features(model, Preprocessing(image_size=96, mean=(0.5,) * 3, std=(0.5,) * 3), samples, tmp_path)
    with torch.no_grad():
        model.backbone.conv_stem.weight.mul_(1.01)  # other weights -> other entry
    other_w = cached_features(model, pre, samples, tmp_path)
    assert len({first.key, other_pre.key, other_w.key}) == 3
    assert other_pre.features.shape[-1] == 3 and first.features.shape[-1] == 2  # 96 px vs 64 px maps
    with pytest.raises(KeyError, match="not in feature cache"):
        first.rows(load_source(synth_data).samples[6:8])


def test_features_match_the_backbone(synth_data: Path, tmp_path: Path) -> None:
    from fetalplanes.core.spec import Preprocessing
    from fetalplanes.data.sources import load_source
    from fetalplanes.data.torch_data import ImageDataset
    from fetalplanes.models import create_model

    samples = load_source(synth_data).samples[:4]
    model = create_model("paper_lite0", 6, pretrained=False).eval()
    pre = Preprocessing(image_size=64)
    fs = cached_features(model, pre, samples, tmp_path)
    x = torch.stack([ImageDataset(samples, pre)[i][0] for i in range(4)])
    with torch.no_grad():
        ref = model.backbone.forward_features(x)
    assert torch.allclose(fs.features.float(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.slow
def test_frozen_run_checkpoint_loads_and_matches_cached_head(frozen_run, synth_data: Path) -> None:
    from fetalplanes.evaluation.predict import sample_logits
    from fetalplanes.models.torch_backend import TorchPredictor
    from fetalplanes.models.weights import LITE0_BACKBONE, lite0_state_dict, map_lite0_keys
    from fetalplanes.models.checkpoint import load_model, read_checkpoint

    result, out = frozen_run
    model, spec = load_model(result.best_checkpoint)
    assert spec.architecture["finetune"] == "frozen"
    import timm

    ref = map_lite0_keys(lite0_state_dict(), timm.create_model(LITE0_BACKBONE).state_dict())
    own = model.backbone.state_dict()
    assert all(torch.equal(own[k], ref[k]) for k in own)  # the backbone never changed
    summary = json.loads((result.run_dir / "train_summary.json").read_text())
    assert {"epochs_run", "best_val_f1_macro", "params", "splits", "feature_cache"} <= set(summary)
    assert summary["feature_cache"]["augment_applied"] is False
    assert summary["params"]["trainable"] < summary["params"]["total"]
    assert (result.run_dir / "calibration.json").is_file()
    assert "fetalplanes" in read_checkpoint(result.best_checkpoint)
    # The checkpoint's full forward equals the head applied to the cached features.
    from fetalplanes.data.sources import load_source

    index = load_source(synth_data)
    every = sorted(index.samples, key=lambda s: str(s.path))
    fs = cached_features(model, spec.preprocessing, every, out / "cache")
    assert fs.cached
    with torch.no_grad():
        cached_logits = model.forward_head(model.attention(fs.features[:8].float()))
    full = sample_logits(TorchPredictor.from_model(model, spec), every[:8])
    assert torch.allclose(cached_logits, torch.from_numpy(full), atol=5e-2)
    assert (cached_logits.argmax(1).numpy() == full.argmax(1)).mean() >= 0.875


@pytest.mark.parametrize("attention", ["none", "se"])
def test_pooled_shortcut_is_exact(attention: str) -> None:
    from fetalplanes.models import create_model
    from fetalplanes.training.feature_cache import POOL_COMMUTING, pool_features

    assert attention in POOL_COMMUTING
    model = create_model("paper_lite0", 6, pretrained=False, attention=attention, finetune="frozen").eval()
    feats = torch.randn(5, 1280, 3, 3).abs().half()
    with torch.no_grad():
        full = model.forward_head(model.attention(feats.float()))
        pooled = model.forward_head(model.attention(pool_features(feats)))
    assert torch.allclose(full, pooled, atol=1e-5)


def test_cbam_is_not_pool_commuting() -> None:
    from fetalplanes.models import create_model
    from fetalplanes.training.feature_cache import POOL_COMMUTING, pool_features

    assert "cbam" not in POOL_COMMUTING
    model = create_model("paper_lite0", 6, pretrained=False, attention="cbam").eval()
    feats = torch.randn(5, 1280, 3, 3).abs().half()
    with torch.no_grad():
        full = model.forward_head(model.attention(feats.float()))
        pooled = model.forward_head(model.attention(pool_features(feats)))
    assert not torch.allclose(full, pooled, atol=1e-3)  # why CBAM keeps the full maps
