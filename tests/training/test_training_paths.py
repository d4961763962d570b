"""Both training paths share one loop: one parameter-group rule, one validation metric, one
checkpoint writer; the frozen fast path is a data source (cached features) for that loop, and
calibration is the pipeline's step after training, not part of ``fit``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fetalplanes.core.classes import PLANES
from fetalplanes.training.config import load_config
from fetalplanes.training.optim import param_groups

TINY = {"data.image_size": 64, "data.num_workers": 0, "optim.batch_size": 16, "trainer.progress": False,
        "trainer.seed": 0, "data.augment": 0.0, "model.pretrained": "none"}


def _module(inputs: str = "images", **overrides):
    from fetalplanes.training.fit import build_run_model
    from fetalplanes.training.module import PlaneModule

    cfg = load_config("demo", {**TINY, **overrides})
    model, spec = build_run_model(cfg, PLANES, {})
    module = PlaneModule(cfg, spec, model, inputs=inputs)
    # configure_optimizers reads the step count from the trainer; a stand-in is enough here.
    module._trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=2)
    return module


def _groups(optimizer: torch.optim.Optimizer) -> list[tuple[set[int], float, float]]:
    # initial_lr: the warm-up schedule has already scaled "lr" for step 0.
    return [({id(p) for p in g["params"]}, g.get("initial_lr", g["lr"]), g["weight_decay"]) for g in optimizer.param_groups]


def test_param_group_rule() -> None:
    from fetalplanes.models import create_model

    model = create_model("paper_lite0", 6, pretrained=False, finetune="last_k", finetune_k=1)
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, backbone_lr_mult=0.1)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {i for g in groups for i in map(id, g["params"])} == trainable
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        backbone = {names[id(p)].startswith("backbone.") for p in g["params"]}
        flat = {p.ndim <= 1 for p in g["params"]}
        assert len(backbone) == 1 and len(flat) == 1  # each group is one kind of parameter
        assert g["lr"] == pytest.approx(1e-4 if backbone.pop() else 1e-3)
        assert g["weight_decay"] == (0.0 if flat.pop() else 0.05)
    frozen = create_model("paper_lite0", 6, pretrained=False, finetune="frozen")
    in_groups = {id(p) for g in param_groups(frozen, 1e-3, 0.05, 0.1) for p in g["params"]}
    assert in_groups and not in_groups & {id(p) for p in frozen.backbone.parameters()}


@pytest.mark.parametrize("inputs", ["images", "features"])
def test_both_inputs_use_the_one_rule(inputs: str) -> None:
    module = _module(inputs, **{"model.finetune": "frozen"})
    o = module.cfg.optim
    optimizer = module.configure_optimizers()["optimizer"]
    assert bool(optimizer.defaults.get("fused")) == (inputs == "features")  # fused kernel: fast path only
    assert _groups(optimizer) == _groups(torch.optim.AdamW(param_groups(module.model, o.lr, o.weight_decay,
                                                                        o.backbone_lr_mult), lr=o.lr))


def test_feature_input_skips_the_frozen_backbone_only() -> None:
    images = _module("images", **{"model.finetune": "frozen"}).eval()
    features = _module("features", **{"model.finetune": "frozen"}).eval()
    features.load_state_dict(images.state_dict())
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        maps = images.model.backbone.forward_features(x)
        assert torch.allclose(features(maps.half()), images(x), atol=2e-2)  # cached maps are float16
        assert torch.allclose(features(maps), images(x), atol=1e-5)
    with pytest.raises(ValueError, match="frozen backbone"):
        _module("features", **{"model.finetune": "full"})


def test_feature_batches_follow_the_epoch_sampler() -> None:
    from fetalplanes.training.feature_cache import FeatureDataModule

    cfg = load_config("demo", {**TINY, "optim.batch_size": 4})
    x = torch.arange(10, dtype=torch.float16).view(10, 1, 1, 1).expand(10, 2, 3, 3).contiguous()
    y = torch.arange(10) % 6
    dm = FeatureDataModule(x, y, x[:5], y[:5], cfg, 6, pooled=True)
    assert dm.train_x.shape == (10, 2, 1, 1) and dm.train_x.dtype == torch.float32  # averaged once

    def epoch(k: int) -> list[int]:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(k)  # what Lightning calls at every epoch start
        batches = list(loader)
        assert [len(b[1]) for b in batches] == [4, 4, 2]
        rows = [int(v) for xb, _ in batches for v in xb[:, 0, 0, 0]]
        assert [int(v) for _, yb in batches for v in yb] == [r % 6 for r in rows]  # labels travel with rows
        return rows

    first = epoch(0)
    assert sorted(first) == list(range(10))
    assert epoch(0) == first and epoch(1) != first  # seeded per epoch: resumable, reshuffled


@pytest.fixture(scope="module")
def fast_run(synth_data: Path, tmp_path_factory: pytest.TempPathFactory):
    from fetalplanes.training.fit import fit_frozen

    out = tmp_path_factory.mktemp("fast")
    cfg = load_config("demo", {**TINY, "optim.max_epochs": 2, "model.finetune": "frozen", "model.attention": "se"})
    result = fit_frozen(synth_data, cfg, out / "run", out / "cache")
    # Recorded now: other tests of this module calibrate the same run folder, in any order.
    _FIT_WROTE_CALIBRATION[result.run_dir] = (result.run_dir / "calibration.json").exists()
    return result, cfg


_FIT_WROTE_CALIBRATION: dict[Path, bool] = {}


def test_fast_path_runs_the_lightning_loop(fast_run) -> None:
    from fetalplanes.models.checkpoint import load_model, read_checkpoint

    result, _ = fast_run
    run = result.run_dir
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    f1 = [float(r["val/f1_macro"]) for r in rows if r.get("val/f1_macro")]
    assert len(f1) == 2  # the shared metric, logged by the shared module every epoch
    assert result.summary["best_val_f1_macro"] == pytest.approx(max(f1))
    assert result.summary["feature_cache"]["pooled"] is True and result.summary["epochs_run"] == 2
    ckpt = read_checkpoint(result.best_checkpoint)
    assert ckpt["feature_cache"]["key"] == result.summary["feature_cache"]["key"]
    assert ckpt["fetalplanes"]["spec"]["architecture"]["finetune"] == "frozen"
    best, spec = load_model(result.best_checkpoint)
    last, _ = load_model(result.last_checkpoint)
    assert spec.class_names == PLANES
    assert all(torch.equal(a, b) for a, b in zip(best.backbone.state_dict().values(), last.backbone.state_dict().values()))
    assert _FIT_WROTE_CALIBRATION[run] is False  # fit trains; calibrating is the pipeline's next step
    assert [s.path for s in result.val_samples] and "calibration" not in result.summary


def test_pipeline_calibrates_a_finished_run_once(fast_run, synth_data: Path) -> None:
    from fetalplanes.models.checkpoint import load_model
    from fetalplanes.workflow import train_and_calibrate

    result, cfg = fast_run
    last = result.last_checkpoint.stat().st_mtime_ns
    again = train_and_calibrate(synth_data, cfg, result.run_dir, reuse_finished=True, report_test=True)
    assert result.last_checkpoint.stat().st_mtime_ns == last  # not trained again
    saved = json.loads((result.run_dir / "calibration.json").read_text())
    assert again.summary["calibration"]["temperature"] == saved["temperature"] and "test" in saved
    assert load_model(result.best_checkpoint)[1].temperature == pytest.approx(saved["temperature"])
    stamp = (result.run_dir / "calibration.json").stat().st_mtime_ns
    train_and_calibrate(synth_data, cfg, result.run_dir, reuse_finished=True)
    assert (result.run_dir / "calibration.json").stat().st_mtime_ns == stamp  # calibrated once


def test_fast_path_refuses_a_trainable_backbone_before_writing(synth_data: Path, tmp_path: Path) -> None:
    from fetalplanes.training.fit import fit_frozen

    with pytest.raises(ValueError, match="finetune 'frozen'"):
        fit_frozen(synth_data, load_config("demo", {**TINY, "model.finetune": "full"}), tmp_path / "run")
    assert not (tmp_path / "run").exists()
