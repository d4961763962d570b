"""Model files written before spec format 1.3 (CBAM gate without BatchNorm) keep loading and
answering as they did, through the library and every command that reads a model.

The old files are made the way the old code wrote them: the trained tiny model's spatial
BatchNorm is folded into the gate's convolution (the old layer: conv with bias, no norm; same
outputs in eval mode), the ``attention.spatial_norm.*`` tensors are dropped, and the spec says
format 1.2 with only ``spatial_padding`` recorded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fetalplanes.core.spec import SPEC_FORMAT_VERSION
from fetalplanes.models.checkpoint import CKPT_KEY, load_model, read_checkpoint, update_spec

GATE = "model.attention."
OLD_KWARGS = {"spatial_padding": "replicate"}  # what a 1.2 spec recorded


def write_spec_1_2(src: Path, dst: Path) -> Path:
    """``src`` (a spec-1.3 checkpoint with the gate's BatchNorm) as the old code wrote it."""
    ckpt = read_checkpoint(src)
    state = ckpt["state_dict"]
    bn = {k: state.pop(f"{GATE}spatial_norm.{k}")
          for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    scale = bn["weight"] / torch.sqrt(bn["running_var"] + 1e-5)
    state[f"{GATE}spatial.weight"] = state[f"{GATE}spatial.weight"] * scale.view(-1, 1, 1, 1)
    state[f"{GATE}spatial.bias"] = bn["bias"] - bn["running_mean"] * scale
    record = ckpt[CKPT_KEY]
    record["spec"] = {**record["spec"], "format_version": "1.2",
                      "architecture": {**record["spec"]["architecture"], "attention_kwargs": dict(OLD_KWARGS)}}
    record["config"]["model"]["attention_kwargs"] = dict(OLD_KWARGS)
    torch.save(ckpt, dst)
    return dst


@pytest.fixture(scope="module")
def old_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_spec_1_2(tiny_checkpoint, tmp_path_factory.mktemp("old") / "best.ckpt")


def _images(synth_data: Path, n: int = 4) -> list[Path]:
    return sorted((synth_data / "Images").glob("*.png"))[:n]


def test_old_checkpoint_rebuilds_without_the_norm_and_answers_the_same(tiny_checkpoint: Path,
                                                                       old_checkpoint: Path) -> None:
    new, _ = load_model(tiny_checkpoint)
    old, spec = load_model(old_checkpoint)
    assert spec.format_version == SPEC_FORMAT_VERSION
    assert spec.architecture["attention_kwargs"] == {"spatial_padding": "replicate", "spatial_norm": "none"}
    assert old.attention.spatial_norm_kind == "none" and isinstance(old.attention.spatial_norm, torch.nn.Identity)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(old(x), new(x), atol=1e-4)


def test_old_checkpoint_through_the_runtime_and_predict(tiny_checkpoint: Path, old_checkpoint: Path,
                                                        synth_data: Path, cli_run) -> None:
    from fetalplanes.runtime import load_predictor

    files = _images(synth_data)
    ref = [(r.path, r.prediction) for r in load_predictor(tiny_checkpoint).predict(files, k=2)]
    got = [(r.path, r.prediction) for r in load_predictor(old_checkpoint).predict(files, k=2)]
    for (_, a), (_, b) in zip(ref, got):
        assert a.label == b.label and b.confidence == pytest.approx(a.confidence, abs=1e-4)
    proc = cli_run("predict", "--model", str(old_checkpoint), "--format", "json", *map(str, files))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    assert [r["label"] for r in rows] == [p.to_dict()["label"] for _, p in ref]  # no plane for an OOD answer


def test_calibrating_an_old_checkpoint_writes_a_current_spec_that_still_loads(old_checkpoint: Path,
                                                                               tmp_path: Path) -> None:
    path = tmp_path / "best.ckpt"
    shutil.copy(old_checkpoint, path)
    update_spec(path, temperature=1.5)  # what `calibrate` does
    raw = read_checkpoint(path)[CKPT_KEY]["spec"]
    assert raw["format_version"] == SPEC_FORMAT_VERSION
    assert raw["architecture"]["attention_kwargs"] == {"spatial_padding": "replicate", "spatial_norm": "none"}
    model, spec = load_model(path)
    assert spec.temperature == 1.5 and model.attention.spatial_norm_kind == "none"


def test_old_checkpoint_through_calibrate_explain_and_export(tiny_checkpoint: Path, old_checkpoint: Path,
                                                             synth_data: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fetalplanes.cli import app
    from fetalplanes.cli.deploy import register as register_deploy
    from fetalplanes.cli.explain import register as register_explain
    from fetalplanes.cli.reproduce import register as register_reproduce
    from fetalplanes.runtime import load_predictor

    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    for name, register in (("explain", register_explain), ("export", register_deploy),
                           ("calibrate", register_reproduce)):
        if name not in names:
            register(app)
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(old_checkpoint, ckpt)
    run = CliRunner().invoke
    res = run(app, ["calibrate", "--checkpoint", str(ckpt), "--data", str(synth_data), "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert load_model(ckpt)[0].attention.spatial_norm_kind == "none"  # rewritten, still the old gate
    res = run(app, ["explain", "--checkpoint", str(ckpt), "--data", str(synth_data), "--out", str(tmp_path / "e"),
                    "--limit", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "e").rglob("*.npy"))) == 2
    onnx_path = tmp_path / "old.onnx"
    res = run(app, ["export", "--checkpoint", str(ckpt), "--out", str(onnx_path), "--calibration", str(synth_data),
                    "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["fp32"]["passed"]
    files = _images(synth_data)
    a = [(r.path, r.prediction) for r in load_predictor(ckpt).predict(files, k=1)]
    b = [(r.path, r.prediction) for r in load_predictor(onnx_path).predict(files, k=1)]
    assert [p.label for _, p in a] == [p.label for _, p in b]


def test_onnx_with_a_spec_1_2_loads_in_the_runtime(onnx_model: Path, synth_data: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from fetalplanes.runtime import load_predictor
    from fetalplanes.runtime.artifact import SPEC_KEY

    proto = onnx.load(str(onnx_model))
    for entry in proto.metadata_props:
        if entry.key == SPEC_KEY:
            d = json.loads(entry.value)
            d["format_version"] = "1.2"
            d["architecture"]["attention_kwargs"] = dict(OLD_KWARGS)
            entry.value = json.dumps(d)
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    p = load_predictor(old)
    assert p.spec.format_version == SPEC_FORMAT_VERSION
    assert p.spec.architecture["attention_kwargs"]["spatial_norm"] == "none"
    files = _images(synth_data, 2)
    ref = [(r.path, r.prediction) for r in load_predictor(onnx_model).predict(files, k=1)]
    got = [(r.path, r.prediction) for r in p.predict(files, k=1)]
    assert np.allclose([q.confidence for _, q in ref], [q.confidence for _, q in got])
