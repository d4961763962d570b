"""``fit(..., resume=True)`` continues a run only with the model the run was trained as.

A run started before a default changed (CBAM's spatial_norm, spec format 1.3) holds a
last.ckpt without the gate's BatchNorm; resuming it with a config read now would fail to load
the weights deep inside Lightning. The check names the differing field and the run's value.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fetalplanes.core.classes import PLANES
from fetalplanes.core.errors import UsageError
from fetalplanes.core.spec import ModelSpec
from fetalplanes.models.checkpoint import write_checkpoint
from fetalplanes.models.registry import build_model
from fetalplanes.training.config import load_config
from fetalplanes.training.fit import check_resumable, fit

TINY = {"data.image_size": 64, "data.num_workers": 0, "optim.batch_size": 16, "trainer.progress": False,
        "model.pretrained": "none"}


def _run_started_with(run: Path, overrides: dict, version: str, recorded: dict) -> Path:
    """A run folder whose last.ckpt was written by a release with spec ``version``, whose spec
    recorded ``recorded`` as the attention options (``overrides`` built its weights)."""
    cfg = load_config("demo", {**TINY, **overrides})
    arch = {**cfg.model.model_dump(mode="json"), "attention_kwargs": recorded}
    spec = ModelSpec.from_dict({"name": "old", "task": "planes", "class_names": list(PLANES), "architecture": arch,
                                "format_version": version})
    return write_checkpoint(run / "checkpoints" / "last.ckpt", build_model(cfg.model, len(PLANES)), spec, {})


def test_resuming_a_run_from_before_the_gate_norm_names_the_setting(synth_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    last = _run_started_with(run, {"model.attention_kwargs.spatial_norm": "none"}, "1.2",
                             {"spatial_padding": "replicate"})
    match = (r"^--resume: .*last\.ckpt was trained as another model \(model\.attention_kwargs: the run has "
             r"\{'spatial_padding': 'replicate', 'spatial_norm': 'none'\}, the config gives "
             r"\{'spatial_padding': 'replicate', 'spatial_norm': 'batch'\}\)")
    with pytest.raises(UsageError, match=match):
        fit(synth_data, load_config("demo", TINY), run, resume=True)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]  # nothing written before the refusal
    # With the run's settings the run continues.
    check_resumable(last, load_config("demo", {**TINY, "model.attention_kwargs.spatial_norm": "none"}))


def test_a_run_resumes_with_its_own_settings_whatever_the_weights_source(tmp_path: Path) -> None:
    last = _run_started_with(tmp_path, {}, "1.3", {"spatial_padding": "replicate", "spatial_norm": "batch"})
    check_resumable(last, load_config("demo", {**TINY, "model.pretrained": "lite0-pypi"}))
    with pytest.raises(UsageError, match=r"model\.dropout: the run has 0\.3, the config gives 0\.5"):
        check_resumable(last, load_config("demo", {**TINY, "model.dropout": 0.5}))
