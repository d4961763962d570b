"""A model file is data, never code: a checkpoint whose pickle would run code is refused (the code
never runs) by every door that reads a model; every field of the record is checked in one line;
ONNX files are bounded before a session is built (issue 18, kind 1)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from fetalplanes.models.checkpoint import CKPT_KEY, CheckpointError, load_model, read_checkpoint
from fetalplanes.runtime.artifact import ModelFileError


class _Marker:
    """Unpickling this creates ``path`` (what an attacker's ``os.system`` would do, harmlessly)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture()
def evil(tiny_checkpoint: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A genuine checkpoint with one extra key whose unpickling would create a marker file."""
    marker = tmp_path / "MARKER"
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["extra"] = _Marker(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    assert not marker.exists()
    return path, marker


def test_a_code_carrying_checkpoint_is_refused_and_its_code_never_runs(evil: tuple[Path, Path]) -> None:
    from fetalplanes.runtime import load_predictor
    from fetalplanes.runtime.artifact import read_spec

    path, marker = evil
    for reader in (read_checkpoint, load_model, read_spec, load_predictor):
        with pytest.raises(CheckpointError, match=r"evil\.ckpt: refused: the file needs the Python object '[\w.]*open'") as err:
            reader(path)
        assert "\n" not in str(err.value)
    assert not marker.exists()


def test_a_bare_pickle_is_refused(tmp_path: Path) -> None:
    marker, path = tmp_path / "MARKER", tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps({"state_dict": _Marker(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match="raw.pt: refused"):
        load_model(path)
    assert not marker.exists()


def test_a_protocol_4_pickle_is_refused_in_one_line_without_torch_warnings(tmp_path: Path) -> None:
    """pickle.dump's default protocol (4+) made torch print a two-line UserWarning before the refusal."""
    import warnings

    marker, path = tmp_path / "MARKER", tmp_path / "raw4.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": _Marker(marker)}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match=r"raw4\.ckpt: cannot read as a PyTorch checkpoint"):
            load_model(path)
    assert [str(w.message) for w in caught if "pickle protocol" in str(w.message)] == []
    assert not marker.exists()


def test_resume_and_the_service_refuse_it_too(evil: tuple[Path, Path]) -> None:
    from fetalplanes.serve.app import ServeSettings, build_app
    from fetalplanes.training.callbacks import AtomicCheckpointIO
    from fetalplanes.training.config import load_config
    from fetalplanes.training.fit import check_resumable

    path, marker = evil
    with pytest.raises(CheckpointError, match="refused"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)  # whatever Lightning asks for
    with pytest.raises(CheckpointError, match="refused"):
        check_resumable(path, load_config("demo"))
    with pytest.raises(CheckpointError, match="refused"):
        build_app(ServeSettings(model_path=path))
    assert not marker.exists()


def test_the_cli_refuses_it_in_one_line(evil: tuple[Path, Path], synth_data: Path, cli_run) -> None:
    path, marker = evil
    image = sorted((synth_data / "Images").glob("*.png"))[0]
    proc = cli_run("predict", "--model", str(path), str(image))
    assert proc.returncode != 0
    assert "refused" in proc.stderr and "evil.ckpt" in proc.stderr
    assert not marker.exists()


def _edited(tiny_checkpoint: Path, tmp_path: Path, edit) -> Path:
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    edit(ckpt)
    out = tmp_path / "edited.ckpt"
    torch.save(ckpt, out)
    return out


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c[CKPT_KEY].pop("spec"), "record has no 'spec'"),
    (lambda c: c[CKPT_KEY].__setitem__("spec", "x"), "'fetalplanes.spec' is str, expected dict"),
    (lambda c: c[CKPT_KEY].__setitem__("format", "2"), "'fetalplanes.format' is str, expected int"),
    (lambda c: c[CKPT_KEY].__setitem__(CKPT_KEY, None) or c.__setitem__(CKPT_KEY, [1]), "record is list"),
    (lambda c: c.__setitem__("state_dict", {"model.x": 3}), "'model.x' is not a named tensor"),
    (lambda c: c[CKPT_KEY]["spec"].pop("class_names"), r"missing required field\(s\) \['class_names'\]"),
    (lambda c: c[CKPT_KEY]["spec"].__setitem__("class_names", 5), "invalid spec"),
    (lambda c: c["state_dict"].pop(next(iter(c["state_dict"]))), "does not match the spec's architecture: 1 missing"),
    (lambda c: c["state_dict"].__setitem__("model.head.0.weight", torch.zeros(3, 3)), "of another shape"),
])
def test_every_field_of_the_record_is_checked_in_one_line(tiny_checkpoint: Path, tmp_path: Path, edit,
                                                          message: str) -> None:
    path = _edited(tiny_checkpoint, tmp_path, edit)
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_genuine_checkpoints_still_load(tiny_checkpoint: Path) -> None:
    model, spec = load_model(tiny_checkpoint)
    assert spec.num_classes == 6 and not model.training


# ------------------------------------------------------------------------------ ONNX
onnx = pytest.importorskip("onnx")


def _onnx_with(tmp_path: Path, tensor) -> Path:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y], [tensor])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    return path


def test_onnx_declared_sizes_are_bounded_before_a_session(tmp_path: Path) -> None:
    from onnx import TensorProto

    from fetalplanes.runtime.session import load_session

    big = _onnx_with(tmp_path, TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20]))
    with pytest.raises(ModelFileError, match=r"m.onnx: initializer 'big' declares shape .* at most"):
        load_session(big)


def test_onnx_raw_data_must_match_its_shape(tmp_path: Path) -> None:
    from onnx import TensorProto

    from fetalplanes.runtime.session import load_session

    path = _onnx_with(tmp_path, TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], raw_data=b"\0" * 8))
    with pytest.raises(ModelFileError, match="'w' declares 4 elements of 4 byte"):
        load_session(path)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/hostname", "missing.bin"])
def test_onnx_external_data_stays_in_the_models_folder(tmp_path: Path, location: str) -> None:
    from onnx import TensorProto

    from fetalplanes.runtime.artifact import read_spec

    (tmp_path.parent / "outside.bin").write_bytes(b"\0" * 16)
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    with pytest.raises(ModelFileError, match="'w' keeps its data in"):
        read_spec(_onnx_with(tmp_path, tensor))


def test_exported_onnx_passes_the_bounds(onnx_model: Path) -> None:
    from fetalplanes.runtime.session import check_onnx

    check_onnx(onnx_model)  # raises on a false refusal
